"""Host adapters: the ``llm`` plugin and the LiteLLM custom provider.

Neither module imports litellm or the routing engine at import time: hosts load
plugins on every invocation, and they must stay fast.
"""
