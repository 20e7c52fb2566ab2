"""Models behind an OpenAI-compatible completions server (vLLM, llama-cpp-python's server, ...).

``shapshift.load_model("openai-compatible:http://HOST:PORT/v1")`` returns a :class:`RemoteModel`
that every estimator, pipeline stage and report takes like a local model; it needs the optional
extra ``shapshift[remote]`` (httpx).
"""

from .client import CompletionsClient, Usage
from .model import RemoteModel, load_remote, parse_spec
from .scorer import RemoteScorer

__all__ = ["CompletionsClient", "RemoteModel", "RemoteScorer", "Usage", "load_remote", "parse_spec"]
