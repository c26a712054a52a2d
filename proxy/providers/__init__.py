"""Reaching providers: over HTTP (one pooled session), or through litellm's library."""
