"""``WORKDIR@STEP``: a path holding '@' of its own is that path (it was cut at its first '@'
and refused: 'STEP of WORKDIR@STEP must be a number')."""

from mami_jax.model_name import workdir_and_step


def test_a_path_with_an_at_sign_of_its_own(tmp_path):
    home = tmp_path / "user@corp.com" / "run"
    home.mkdir(parents=True)
    assert workdir_and_step(str(home)) == (str(home), None)
    assert workdir_and_step(f"{home}@500") == (str(home), "500")
    assert workdir_and_step(str(tmp_path / "run")) == (str(tmp_path / "run"), None)
    assert workdir_and_step(f"{tmp_path}/run@x") == (f"{tmp_path}/run", "x")   # refused later
    assert workdir_and_step("runs@v2@2") == ("runs@v2", "2")
