"""kinject.resources: shipped files resolve from a checkout; other paths are refused."""

import pytest

from kinject.resources import shipped, shipped_root


def test_shipped_paths_resolve_in_a_checkout():
    assert (shipped_root() / "configs").is_dir()
    assert shipped("configs/eval/tiny.yaml").is_file()
    assert (shipped("assets/foundation/tiny") / "base" / "config.json").is_file()


@pytest.mark.parametrize("bad", ["/etc/passwd", "src/kinject/cli.py", ""])
def test_only_shipped_folders_are_reachable(bad):
    with pytest.raises(ValueError, match="not a shipped path"):
        shipped(bad)
