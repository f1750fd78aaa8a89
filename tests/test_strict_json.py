"""strict_json: what every JSON writer of mami_jax goes through. A non-finite number is
written null (RFC 8259 has no NaN or Infinity), numpy values as the numbers they hold,
anything else refused naming where it sits."""

import json
import math

import numpy as np
import pytest

from mami_jax.runtime import strict_json
from tests.strict_json_reader import strict_loads


def test_non_finite_numbers_are_written_null_and_numpy_values_as_numbers():
    value = {"psnr": math.inf, "auc": np.float32("nan"), "low": -np.inf,
             "cmc": np.array([0.5, np.nan, 1.0]), "n": np.int64(3), "ok": np.bool_(True),
             "pair": (1.5, None), 7: "seven"}
    text = strict_json.dumps(value, sort_keys=True)
    assert strict_loads(text) == {"psnr": None, "auc": None, "low": None,
                                  "cmc": [0.5, None, 1.0], "n": 3, "ok": True,
                                  "pair": [1.5, None], "7": "seven"}
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(json.dumps(0.1)) == strict_loads(strict_json.dumps(np.float64(0.1)))


def test_a_value_json_has_no_form_of_is_refused_naming_where_it_is_or_converted():
    with pytest.raises(TypeError, match=r"^report/records/dtype: cannot write a type as JSON"):
        strict_json.dumps({"records": {"dtype": np.float32}}, where="report")
    assert strict_loads(strict_json.dumps({"dtype": np.float32}, other=str)) == {
        "dtype": "<class 'numpy.float32'>"}
