"""Models: resolve a reference to a fingerprint and load it (refs), and pretrain the project's own bases (pretrain)."""

from harness.models.refs import (ALIASES, CONVERSION_VERSION, HUB_FILES, HUB_ID, ONLINE_ENV, PACKAGED, TRUST_ENV,
                                 ModelError, ModelRef, Packaged, chat_template_info, dequantize_gguf, load,
                                 load_tokenizer, model_path, offline_env, online, resolve, set_worker_env,
                                 trust_remote_code, worker_env)

__all__ = ["ALIASES", "CONVERSION_VERSION", "HUB_FILES", "HUB_ID", "ONLINE_ENV", "PACKAGED", "TRUST_ENV", "ModelError",
           "ModelRef", "Packaged", "chat_template_info", "dequantize_gguf", "load", "load_tokenizer", "model_path",
           "offline_env", "online", "resolve", "set_worker_env", "trust_remote_code", "worker_env"]
