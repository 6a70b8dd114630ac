"""benchmarks/mutation.py: mutant names, diffs and the equivalent-mutant list.

Runs without mutmut: only the harness' parsing and the checked-in list."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mutation  # noqa: E402

DIFF = """# siammae_jax.datasets.vip.x_write_summary__mutmut_3: survived
--- siammae_jax/datasets/vip.py
+++ siammae_jax/datasets/vip.py
@@ -1,3 +1,3 @@
 def write_summary(folder, results):
-    json_path.write_text(json.dumps(x, indent=2))
+    json_path.write_text(json.dumps(x, indent=3))
     return json_path
"""


def test_function_names_of_functions_and_methods():
    assert mutation.function_name("a.b.x_pck__mutmut_12") == "pck"
    assert mutation.function_name("a.b.x__read_label__mutmut_5") == "_read_label"
    name = "a.b.xǁConfusionMatrixǁupdate__mutmut_2"
    assert mutation.function_name(name) == "ConfusionMatrix.update"


def test_changed_lines_skip_the_file_headers():
    before, after = mutation.changed_lines(DIFF)
    assert before == "json_path.write_text(json.dumps(x, indent=2))"
    assert after == "json_path.write_text(json.dumps(x, indent=3))"
    removed = DIFF.replace("+    json_path.write_text(json.dumps(x, indent=3))\n", "")
    assert mutation.changed_lines(removed)[1] == ""


def _result(status="survived"):
    m = mutation.Mutant("siammae_jax.datasets.vip.x_write_summary__mutmut_3", status)
    m.function, (m.before, m.after) = "write_summary", mutation.changed_lines(DIFF)
    other = mutation.Mutant(
        "siammae_jax.datasets.vip.x_write_summary__mutmut_4", "killed"
    )
    slow = mutation.Mutant(
        "siammae_jax.datasets.vip.x_write_summary__mutmut_5", "timeout"
    )
    left = mutation.Mutant(
        "siammae_jax.datasets.vip.x_write_summary__mutmut_6", "not checked"
    )
    return mutation.ModuleResult(
        "siammae_jax/datasets/vip.py", (), 1.0, [m, other, slow, left]
    )


def test_listed_survivors_are_equivalent_and_the_rest_counted():
    entry = {
        "module": "siammae_jax/datasets/vip.py",
        "function": "write_summary",
        "before": "json_path.write_text(json.dumps(x, indent=2))",
        "after": "json_path.write_text(json.dumps(x, indent=3))",
        "kind": "harmless",
        "reason": "indentation",
    }
    elsewhere = dict(entry, function="write_parts")
    result = _result()
    stale = mutation.mark_equivalent(result, [entry, elsewhere])
    assert stale == [elsewhere]
    assert [m.reason for m in result.equivalent] == ["harmless: indentation"]
    assert result.surviving == [] and result.not_run == 1
    assert result.killed == 2 and result.rate == 1.0  # the timeout counts as caught
    unlisted = _result()
    assert mutation.mark_equivalent(unlisted, []) == []
    assert len(unlisted.surviving) == 1 and unlisted.rate == pytest.approx(2 / 3)


def test_checked_in_list_names_current_code():
    """Every entry of benchmarks/mutation_equivalent.toml names a harness module,
    a reason, and a ``before`` line that is still in that module's source (a
    stale entry would silently stop matching)."""
    entries = mutation.load_equivalent()
    assert entries, "benchmarks/mutation_equivalent.toml is empty"
    for e in entries:
        assert e["module"] in mutation.MODULES, e
        assert e["reason"].strip() and e.get("kind") in ("equivalent", "harmless"), e
        source = (ROOT / e["module"]).read_text()
        for line in filter(None, e["before"].split(" / ")):
            assert line in source, (e["module"], e["function"], line)


def test_entries_without_a_reason_are_refused(tmp_path):
    bad = tmp_path / "eq.toml"
    bad.write_text(
        '[[mutant]]\nmodule = "m"\nfunction = "f"\nbefore = "a"\nafter = "b"\n'
    )
    with pytest.raises(ValueError, match="mutant entry 0 lacks \\['reason'\\]"):
        mutation.load_equivalent(bad)
