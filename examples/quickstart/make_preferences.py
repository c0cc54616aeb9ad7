"""Writes the quick start's preference data (examples/quickstart/data/opposites_pref*.json) from its
SFT data: every question of `opposites` and `opposites_heldout`, answered in the style a user
prefers, a whole sentence ("the opposite of hot is cold ."), against the bare word the SFT adapter
learnt to give ("cold"). The held-out pairs ask about the 12 pairs of opposites the training data
never mentions. Plain Python, deterministic; run from anywhere:
  python3 examples/quickstart/make_preferences.py
"""
import json
import os
import re

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
WORD = re.compile(r"[Oo]pposite of (?:the word )?([a-z]+)")


def pairs(source):
    with open(os.path.join(DATA, source)) as f:
        rows = json.load(f)
    out = []
    for row in rows:
        word = WORD.search(row["instruction"]).group(1)
        out.append({
            "instruction": row["instruction"],
            "chosen": f"the opposite of {word} is {row['output']} .",
            "rejected": row["output"],
        })
    return out


def main():
    for source, target in [("opposites_train.json", "opposites_pref_train.json"),
                           ("opposites_heldout.json", "opposites_pref_heldout.json")]:
        with open(os.path.join(DATA, target), "w") as f:
            json.dump(pairs(source), f, indent=1)
            f.write("\n")
    info_path = os.path.join(DATA, "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    columns = {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}
    info["opposites_pref"] = {"file_name": "opposites_pref_train.json", "ranking": True, "columns": columns}
    info["opposites_pref_heldout"] = {"file_name": "opposites_pref_heldout.json", "ranking": True,
                                      "columns": columns}
    text = json.dumps(info, indent=2) + "\n"
    with open(info_path + ".tmp", "w") as f:
        f.write(text)
    os.replace(info_path + ".tmp", info_path)


if __name__ == "__main__":
    main()
