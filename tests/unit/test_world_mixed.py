"""World `mixed_domain/` files: offline wordings change nothing else, no offline/online leak,
bad offline-wordings files are one clear error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from kinject.errors import UserError
from kinject.io import read_jsonl
from kinject.world.build import build_world
from kinject.world.spec import load_domain

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/world/tiny.yaml"
DOMAINS = REPO / "configs/world/domains"
WORDINGS = DOMAINS / "offline_wordings"
SMALL = ["fresh.reading_examples=600", "fresh.align_train=200", "fresh.align_dev=50",
         "fresh.reading_dev=50", "fresh.pool_size=300", "private.entities=40",
         "public.statement_docs=25", "public.closed_book_repeats=2", "wiki.two_hop=50",
         "mixed.offline_per_domain=300", "mixed.online_per_domain=60"]
NAMES = ("general", "materials", "adjuvant")


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def _templates() -> dict[str, tuple[str, str]]:
    """Every question template -> (domain, 'train' | 'heldout' | 'offline')."""
    out = {}
    for name in NAMES:
        spec = load_domain(DOMAINS / f"{name}.yaml")
        for et in spec.entity_types:
            for a in et.attributes:
                out.update({t: (name, "train") for t in a.questions})
                out.update({t: (name, "heldout") for t in a.heldout_questions})
        out.update({t: (name, "train") for c in spec.compositions for t in c.questions})
        for ts in yaml.safe_load((WORDINGS / f"{name}.yaml").read_text())["attributes"].values():
            out.update({t: (name, "offline") for t in ts})
    return out


def _parse(questions: list[str], templates: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
    """(template, entity) of each question (every question comes from exactly one template)."""
    rx = [(re.compile("^" + re.escape(t).replace(re.escape("{entity}"), "(.+)") + "$"), t) for t in templates]
    out = []
    for q in questions:
        hits = [(t, m.group(1)) for r, t in rx if (m := r.match(q))]
        assert hits, q
        out.append(min(hits, key=lambda h: len(h[1])))  # the most specific template
    return out


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mixed")
    return (build_world(TINY, tmp / "with", SMALL),
            build_world(TINY, tmp / "without", [*SMALL, "mixed.offline_wordings=null"]))


def test_offline_wordings_change_only_the_offline_files(worlds):
    with_w, without_w = (_files(w) for w in worlds)
    assert with_w.keys() == without_w.keys() and len(with_w) >= 20
    changed = {k for k in with_w if with_w[k] != without_w[k]}
    assert changed == {f"mixed_domain/offline/{n}.jsonl" for n in NAMES}  # online and all else identical
    kinds = {t: k for t, (_, k) in _templates().items()}
    for n in NAMES:
        rows = read_jsonl(worlds[0] / f"mixed_domain/offline/{n}.jsonl")
        used = {kinds[t] for t, _ in _parse([r["question"] for r in rows], _templates())}
        assert len(rows) == 300 and used == {"train", "offline"}


def test_no_leak_between_offline_and_online(worlds):
    """Online questions: no offline string, no offline (wording, entity) pair, and the held-out
    wordings (half the private online questions) occur in no offline file."""
    templates = _templates()
    w = worlds[0]
    offline = [r["question"] for n in NAMES for r in read_jsonl(w / f"mixed_domain/offline/{n}.jsonl")]
    online = read_jsonl(w / "mixed_domain/online/mixed.jsonl")
    off_pairs, on_pairs = set(_parse(offline, templates)), _parse([r["question"] for r in online], templates)
    assert not set(offline) & {r["question"] for r in online}
    assert not off_pairs & set(on_pairs)
    assert all(templates[t][1] != "heldout" for t, _ in off_pairs)
    held = [t for t, _ in on_pairs if templates[t][1] == "heldout"]
    assert len(held) > 0.3 * len(online)


def _wordings_dir(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / "domains"
    shutil.copytree(DOMAINS, d)
    (d / "offline_wordings" / f"{name}.yaml").write_text(text)
    cfg = tmp_path / "w.yaml"
    cfg.write_text(TINY.read_text())
    return cfg


@pytest.mark.parametrize("text,expect", [
    ("domain: adjuvant\nattributes:\n  catalyst.support: ['What holds {entity}?']\n", "file is for domain 'materials'"),
    ("domain: materials\nattributes:\n  adjuvant.th_bias: ['What bias has {entity}?']\n", "has no attribute 'adjuvant.th_bias'"),
    ("domain: materials\nattributes:\n  catalyst.support: ['What is the support of {entity}?']\n", "already a wording of the spec"),
    ("domain: materials\nattributes:\n  catalyst.support: ['Tell me the support material of the catalyst {entity}.']\n",
     "held-out wording 'Name the support material of the catalyst {entity}.'"),
    ("domain: materials\nattributes:\n  catalyst.support: ['What holds {entity} and {support}?']\n", "no other field"),
    ("domain: materials\nattributes:\n  catalyst.support: 'What holds {entity}?'\n", "attributes.catalyst.support"),
    ("domain: materials\nattributes: {}\nextra: 1\n", "key 'extra'"),
])
def test_bad_offline_wordings_are_one_clear_error(tmp_path, text, expect):
    cfg = _wordings_dir(tmp_path, "materials", text)
    with pytest.raises(UserError) as e:
        build_world(cfg, tmp_path / "out", SMALL)
    assert "offline_wordings/materials.yaml" in str(e.value) and expect in str(e.value)
    assert not (tmp_path / "out").exists()
