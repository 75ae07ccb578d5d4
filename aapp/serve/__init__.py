"""`aapp serve`: a pruned model behind the OpenAI chat-completions API (see aapp.serve.server)."""
