"""HTTP routes other than the model calls: usage, billing, records, statements."""
