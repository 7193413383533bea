"""vislab: a transfer-learning visual lab. Plain PyTorch library; the Streamlit pages sit on top of it.

The front door:

    vislab.create_model(name, num_classes, head, weights_choice, img_size)   the one model builder
    vislab.Spec(model=..., strategy=..., ...)                                a fine-tuning job's spec
    vislab.prepare(spec, num_classes)                                        its model, info and phases

They load on first use, not on `import vislab`: the `vislab` command imports this package, and its --help
answers without loading torch (tests/test_cli_paths.py, tests/test_cli_startup.py measure it).
"""

import importlib

__version__ = "0.1.0"
_FRONT = {"create_model": "vislab.models.factory", "Spec": "vislab.training.experiment",
          "prepare": "vislab.training.experiment"}
__all__ = list(_FRONT)


def __getattr__(name: str):
    if name not in _FRONT:  # a submodule not imported yet: the import system loads it after this refusal
        raise AttributeError(f"module 'vislab' has no attribute '{name}'")
    value = getattr(importlib.import_module(_FRONT[name]), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_FRONT])
