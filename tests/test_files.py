"""JSON as the project writes and prints it."""

import json

import pytest

from cct.files import to_json


@pytest.mark.parametrize("value", [
    {"recipe": {"betas": (0.9, 0.999), "progressive_resize": ((16, 4), (24, 5)), "rand_augment": None}},
    {"confusion": [[3, 0], [1, 2]], "per_class": {"猫": 0.5, "Äpfel": None}},
    {1: "a", 2.5: [], None: {}, False: [[]]},  # keys as json.dumps writes them
    [], {}, "text",
])
def test_to_json_reads_back_as_json_dumps_writes_it(value):
    assert json.loads(to_json(value)) == json.loads(json.dumps(value))


def test_to_json_puts_a_list_of_numbers_or_names_on_one_line_and_a_matrix_a_row_a_line():
    assert to_json({"betas": (0.9, 0.999), "names": ["猫", "dog"], "confusion": [[3, 0], [1, 2]]}) == (
        '{\n  "betas": [0.9, 0.999],\n  "names": ["猫", "dog"],\n  "confusion": [\n    [3, 0],\n    [1, 2]\n  ]\n}')
