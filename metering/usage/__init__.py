"""Usage as providers report it: SSE framing, normalized token counts, tiktoken estimates."""
