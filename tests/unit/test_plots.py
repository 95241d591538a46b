"""Figures are drawn with matplotlib's object API: a PNG is written atomically and the host
process's backend is never switched (kinject can plot inside a notebook or a GUI program)."""

from __future__ import annotations

import matplotlib


def test_training_curves_leave_the_backend_alone(tmp_path):
    from kinject.expert.training import plot_loss_curves
    from kinject.gag.trainer import TERMS, plot_losses

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a host program's own choice
    try:
        history = [{"step": s, "phase": "alignment" if s < 3 else "domain", **{t: 1.0 / (s + 1) for t in TERMS}}
                   for s in range(6)]
        png = plot_losses(history, tmp_path / "stage3.png")
        plot_loss_curves([{"step": s, "loss": 2.0 - s / 10} for s in range(5)] + [{"step": 4, "eval_loss": 1.7}],
                         tmp_path / "expert.png", "expert")
        assert matplotlib.get_backend() == "svg"
        for p in (png, tmp_path / "expert.png"):
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sorted(x.name for x in tmp_path.iterdir()) == ["expert.png", "stage3.png"]  # no temp files left
    finally:
        matplotlib.use(before)
