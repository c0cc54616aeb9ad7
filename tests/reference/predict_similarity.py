"""LLaMA-Factory's ComputeSimilarity (src/llamafactory/train/sft/metric.py) on decoded texts.

Reads a JSON list of [prediction, label] pairs on stdin and prints, per pair, jieba's tokens and
the four scores exactly as LLaMA-Factory appends them (×100, round(…, 4)), and their np.mean:
    {"pairs": [{"hyp_tokens": [...], "ref_tokens": [...], "rouge-1": …, …, "bleu-4": …}],
     "means": {"rouge-1": …, "rouge-2": …, "rouge-l": …, "bleu-4": …}}
Needs jieba, nltk and rouge-chinese (scripts/install-python-ref.sh).
"""

import json
import logging
import sys

import jieba
import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(logging.ERROR)

pairs = json.load(sys.stdin)
score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
rows = []
for pred, label in pairs:
    hypothesis = list(jieba.cut(pred))
    reference = list(jieba.cut(label))

    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge()
        scores = rouge.get_scores(" ".join(hypothesis), " ".join(reference))
        result = scores[0]

    row = {"hyp_tokens": hypothesis, "ref_tokens": reference}
    for k, v in result.items():
        row[k] = round(v["f"] * 100, 4)
        score_dict[k].append(row[k])

    bleu_score = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    row["bleu-4"] = round(bleu_score * 100, 4)
    score_dict["bleu-4"].append(row["bleu-4"])
    rows.append(row)

means = {k: float(np.mean(v)) for k, v in score_dict.items()}
json.dump({"pairs": rows, "means": means}, sys.stdout, ensure_ascii=False)
