"""The web faces: the customer portal and the operator console (see `proxy.web.faces`)."""
