"""Wire formats: one module per API, behind one seam (`proxy.formats.base`)."""
