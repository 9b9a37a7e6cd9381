"""Draw the shapes of KD-Loss and its parts (the paper's loss figures), from the package's own code.

    python docs/plot_losses.py --out docs/img

Writes ``loss_aloss.png`` (ALoss for a teacher at 0.4 and at 0.49, regions shaded, beta marked),
``loss_weight.png`` (the ALoss weight w), ``loss_main.png`` (main loss, tau = 0.5, c = 1 and c = 3) and
``loss_total.png`` (the total KD-Loss for the default, paper-figure and official-code constants).
Ground truth G = 0 throughout; coordinates are crop-normalised (about [-0.5, 0.5]).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir():  # draw this checkout's code, installed or not
    sys.path.insert(0, str(_SRC))

REGION_COLOURS = {"R_L": "#cfe8ff", "R_N": "#ffd9d9", "R_P": "#d9f2d9"}


def _shade_regions(ax, t: float, r: float, xmax: float) -> None:
    """Shade R_L, R_N, R_P on both sides of G = 0 for a teacher at distance t."""
    for side in (-1, 1):
        spans = {"R_L": (0, r * t), "R_N": (r * t, t), "R_P": (t, xmax)}
        for name, (a, b) in spans.items():
            lo, hi = sorted((side * a, side * b))
            ax.axvspan(lo, hi, color=REGION_COLOURS[name], alpha=0.8, lw=0,
                       label=name if side == 1 else None)


def plot_aloss(out: Path) -> Path:
    import matplotlib.pyplot as plt
    import torch

    from kdlandmark.losses import KDLossConfig, assistive_loss

    fig_cfg = KDLossConfig.paper_figure()
    a_pos, a_neg, r = fig_cfg.tough_alpha_pos, fig_cfg.tough_alpha_neg, fig_cfg.beta_ratio
    p = torch.linspace(-0.8, 0.8, 3201, dtype=torch.float64)
    zero = torch.zeros_like(p)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, t in zip(axes, (0.4, 0.49), strict=True):
        teacher = torch.full_like(p, t)
        ramp = assistive_loss(p, teacher, zero, a_pos, a_neg, r, True)
        flat = assistive_loss(p, teacher, zero, a_pos, a_neg, r, False)
        _shade_regions(ax, t, r, 0.8)
        ax.plot(p, ramp, "k", lw=2, label="ALoss (ramp in $R_L$, paper figure)")
        ax.plot(p, flat, "--", color="tab:orange", lw=1.5, label="$R_L$ weight 0 (official code)")
        for side in (-1, 1):
            ax.axvline(side * r * t, color="tab:blue", lw=1, ls=":")
            ax.plot([side * r * t], [a_neg * t * (1 - r)], "o", color="tab:blue")
            ax.plot([side * t], [0], "s", color="tab:red")
        ax.annotate(f"β = ±{r * t:.3f}", (r * t, a_neg * t * (1 - r)), textcoords="offset points",
                    xytext=(8, -14), color="tab:blue")
        ax.annotate(f"T′ = ±{t:g}", (t, 0), textcoords="offset points", xytext=(4, 8), color="tab:red")
        ax.axvline(0, color="k", lw=0.8)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"ALoss, teacher at {t:g} (G = 0; α⁺ = {a_pos:g}, α⁻ = {a_neg:g}, r = {r:g})")
        ax.set_xlabel("student prediction P")
        ax.set_xlim(-0.8, 0.8)
        ax.set_ylim(a_neg * 0.49 * (1 - r) * 1.5, 0.45)
    axes[0].set_ylabel("ALoss = ω |T′ − P|")
    axes[0].legend(loc="upper center", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    path = out / "loss_aloss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weight(out: Path) -> Path:
    import matplotlib.pyplot as plt
    import torch

    from kdlandmark.losses import KDLossConfig, assistive_weight

    cfg = KDLossConfig.paper_figure()
    t = 0.4
    p = torch.linspace(-0.8, 0.8, 3201, dtype=torch.float64)
    zero = torch.zeros_like(p)
    teacher = torch.full_like(p, t)
    fig, ax = plt.subplots(figsize=(7, 4))
    _shade_regions(ax, t, cfg.beta_ratio, 0.8)
    w = assistive_weight(p, teacher, zero, cfg.tough_alpha_pos, cfg.tough_alpha_neg, cfg.beta_ratio, True)
    w0 = assistive_weight(p, teacher, zero, cfg.tough_alpha_pos, cfg.tough_alpha_neg, cfg.beta_ratio, False)
    ax.plot(p, w, "k", lw=2, label="ω (ramp in $R_L$, paper figure)")
    ax.plot(p, w0, "--", color="tab:orange", lw=1.5, label="ω with $R_L$ at 0 (official code)")
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_title(f"ALoss weight ω, teacher at {t:g}, G = 0 (α⁺ = 1, α⁻ = −0.5, r = 0.4)")
    ax.set_xlabel("student prediction P")
    ax.set_ylabel("ω")
    ax.set_xlim(-0.8, 0.8)
    ax.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    path = out / "loss_weight.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_main(out: Path) -> Path:
    import matplotlib.pyplot as plt
    import torch

    from kdlandmark.losses import main_loss

    tau = 0.5
    p = torch.linspace(-1.2, 1.2, 2401, dtype=torch.float64)
    zero = torch.zeros_like(p)
    fig, ax = plt.subplots(figsize=(7, 4))
    for c, style in ((1.0, "k"), (3.0, "tab:purple")):
        ax.plot(p, main_loss(p, zero, tau, c), style, lw=2,
                label=f"c = {c:g}" + (" (paper figure)" if c == 1 else " (official code)"))
    ax.plot(p, p ** 2, ":", color="gray", label="(G − P)² for reference")
    for side in (-1, 1):
        ax.axvline(side * tau, color="tab:red", lw=1, ls="--")
    ax.annotate("τ = |G − T_tol| = 0.5", (tau, 0.1), textcoords="offset points", xytext=(4, 0),
                color="tab:red")
    ax.set_title("Main loss, G = 0, τ = 0.5: c|G−P| inside τ, (G−P)² + cτ − τ² beyond")
    ax.set_xlabel("student prediction P")
    ax.set_ylabel("Loss_main")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "loss_main.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _total_elementwise(p, g, tough, tol, cfg):
    """The per-coordinate KD-Loss that :func:`kdlandmark.losses.kd_loss` averages."""
    from kdlandmark.losses import assistive_loss, main_loss

    tau = (g - tol).abs()
    return (cfg.w_main * main_loss(p, g, tau, cfg.main_c)
            + cfg.w_tough * assistive_loss(p, tough, g, cfg.tough_alpha_pos, cfg.tough_alpha_neg,
                                           cfg.beta_ratio, cfg.low_influence_ramp)
            + cfg.w_tol * assistive_loss(p, tol, g, cfg.tol_alpha_pos, cfg.tol_alpha_neg, cfg.beta_ratio,
                                         cfg.low_influence_ramp))


def plot_total(out: Path) -> Path:
    import matplotlib.pyplot as plt
    import torch

    from kdlandmark.losses import KDLossConfig

    p = torch.linspace(-0.6, 0.6, 4801, dtype=torch.float64)
    zero = torch.zeros_like(p)
    configs = {
        "defaults (official α, c = 3, r = 0.4, ramp)": KDLossConfig(),
        "paper-figure constants (α 1/−0.5, c = 1, r = 0.4, ramp)": KDLossConfig.paper_figure(),
        "official code (official α, c = 3, r = 0.15, no ramp)": KDLossConfig.official_code(),
    }
    teachers = [(0.4, 0.2), (0.3, 0.3), (0.5, 0.02)]  # (|Tough - G|, |Tolerant - G|)
    colours = ["tab:blue", "tab:green", "tab:red"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    near = p.abs() <= 0.1
    for ax, (name, cfg) in zip(axes, configs.items(), strict=True):
        inset = ax.inset_axes([0.36, 0.35, 0.28, 0.3])
        for (tt, tl), col in zip(teachers, colours, strict=True):
            # the Tolerant teacher sits on the other side of G; reflection makes the side moot
            values = _total_elementwise(p, zero, torch.full_like(p, tt), torch.full_like(p, -tl), cfg)
            ax.plot(p, values, color=col, lw=1.8, label=f"|T_tough − G| = {tt:g}, |T_tol − G| = {tl:g}")
            inset.plot(p[near], values[near], color=col, lw=1.2)
            for side in (-1, 1):
                ax.plot([side * cfg.beta_ratio * tt], [0], "v", color=col, ms=5)
        for a in (ax, inset):
            a.axvline(0, color="k", lw=0.6)
            a.axhline(0, color="k", lw=0.6)
        inset.set_title("zoom: |P| <= 0.1", fontsize=7)
        inset.tick_params(labelsize=6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("student prediction P (G = 0)")
        ax.set_xlim(-0.6, 0.6)
        ax.legend(fontsize=7, loc="upper center")
    axes[0].set_ylabel("KD-Loss (per coordinate)")
    fig.suptitle("Total KD-Loss = w_main·Loss_main + w_tough·ALoss_Tough + w_tol·ALoss_Tolerant"
                 "  (▼: β of the Tough teacher)", fontsize=11)
    fig.tight_layout()
    path = out / "loss_total.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNG files")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    for draw in (plot_aloss, plot_weight, plot_main, plot_total):
        print(draw(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
