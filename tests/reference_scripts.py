"""The authors' scripts re-implemented from their text, for the reference-profile tests.

Each function follows ``sleepyshep/FineCops-Ref`` line by line, in its own style (plain dicts and
lists, ``re``, ``ast``), so the profile is checked against what the scripts do rather than against
the code under test: ``SFA/target_extraction.py`` (``batch_extract``), ``SFA/inference_GD.py``
(``find_positive``), ``CRS/evaluation_CRS_pos.py`` and ``CRS/evaluation_CRS_neg.py`` (the answer
parsing and the letter mapping).
"""

from __future__ import annotations

import ast
import json
import re

INSTRUCT = "Which object does given expressions refer to? Answer in dict format"
SAMPLE = ('{"1": "next to the red, brick building and before the little tree resides the white truck.", '
          '"2": "to the left of the young, happy, and smiling boy stands the young girl who, in turn, is '
          'positioned to the left of the white dishwasher.", "3": "this tree can be found on the left side '
          'of the white building."}')
RESPONSE = '{"1": "the white truck", "2": "the young girl", "3": "this tree."}'


def split_dict(d, k):
    dict_list, sub_dict, i = [], {}, 0
    for key, value in d.items():
        sub_dict[key] = value
        i += 1
        if i == k:
            dict_list.append(sub_dict)
            sub_dict, i = {}, 0
    if sub_dict:
        dict_list.append(sub_dict)
    return dict_list


def batch_extract(data, gpt, batch_size=8):
    """``results`` of the script for ``data`` (``{id: expression}``), asking ``gpt(messages)``."""
    results = {}
    for prompt in split_dict(data, batch_size):
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": INSTRUCT + SAMPLE},
                    {"role": "assistant", "content": RESPONSE},
                    {"role": "user", "content": json.dumps(prompt)}]
        truncated_text = gpt(messages)
        start_index = truncated_text.find("{")
        if start_index != -1:
            truncated_text = truncated_text[start_index:]
        try:
            result_dict = ast.literal_eval(truncated_text)
        except Exception:
            continue
        try:
            results.update(result_dict)
        except (TypeError, ValueError):
            pass
    # The script saves its results with json.dump and the next script loads them back.
    try:
        return json.loads(json.dumps(results, ensure_ascii=False))
    except TypeError:  # a key json cannot write: the script crashes; drop such keys here
        return json.loads(json.dumps({k: v for k, v in results.items() if isinstance(k, (str, int, float, bool))
                                      or k is None}, ensure_ascii=False))


def find_positive(expression, subject):
    exp_lower = expression.lower()
    subject_lower = subject.lower()
    start_index = exp_lower.find(subject_lower)
    if start_index == -1:
        return None
    end_index = start_index + len(subject)
    return [start_index, end_index]


def extract_option(answer):
    matches = list(re.finditer(r"\b([A-D])\b", answer))
    for match in reversed(matches):
        return match.group(1).upper()
    return None


def extract_first_option(text):
    match = re.search(r"\b[A-F]\b", text)
    if match:
        return match.group()
    return None


def positive_box(answer_text, gd_box):
    """``evaluation_CRS_pos.py``: the box a generated answer stands for among the raw detector boxes."""
    option = answer_text.upper()
    if len(option) != 1:
        option = extract_option(option)
    if option == "A" and len(gd_box) > 0:
        return gd_box[0]
    if option == "B" and len(gd_box) > 1:
        return gd_box[1]
    if option == "C" and len(gd_box) > 2:
        return gd_box[2]
    if option == "D" and len(gd_box) > 3:
        return gd_box[3]
    return [0.0, 0.0, 0.0, 0.0]


def negative_option(answer_text, gt):
    """``evaluation_CRS_neg.py``: what ``gt`` (letter -> post-NMS box, or 'None') gives for the answer;
    ``KeyError`` where the script fails."""
    option = answer_text.replace(".", "")
    if len(option) > 1:
        option = extract_first_option(option)
    return gt[option]
