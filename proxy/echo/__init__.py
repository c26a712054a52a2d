"""The local echo model: a provider that speaks OpenAI's, Anthropic's and Gemini's wire, in-process."""
