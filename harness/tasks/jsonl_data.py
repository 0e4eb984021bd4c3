"""The data loader these task YAMLs name (`custom_dataset: !function jsonl_data.load`).

lm-eval hands `dataset_kwargs.data_files` to `datasets.load_dataset`, which resolves relative paths against the
process's working directory; this loader resolves them against this folder instead, so the plain lm-eval CLI
(`lm_eval --include_path /path/to/tasks ...`) finds the data from any directory. Copy it next to your own task YAMLs
to get the same behaviour.
"""

from pathlib import Path


def load(data_files, **_):
    import datasets

    here = Path(__file__).resolve().parent
    files = data_files if isinstance(data_files, dict) else {"test": data_files}
    files = {split: [str(here / f) for f in ([p] if isinstance(p, str) else p)] for split, p in files.items()}
    return datasets.load_dataset("json", data_files=files)
