"""The comparison's table (Markdown and JSON) and its bar chart."""
from __future__ import annotations

import json
import os

TYPES = ("where_person", "who_has", "what_color", "where_object")


def _types(per_type: dict) -> list:
    return [t for t in TYPES if t in per_type] + sorted(set(per_type) - set(TYPES))


def markdown(res: dict) -> str:
    rows = res["rows"]
    types = _types(rows[0]["per_type"]) if rows else []
    ref = next((r for r in rows if r["strategy"] == "full" and not _regularised(r)), None)
    head = ["run", "trainable", "steps", "ms/step", "cost", "wall s", "loss per epoch",
            "EM", "F1"] + [f"EM {t}" for t in types] + ["MLM loss before -> after"]
    reg = res["kind"] != "strategies"
    if reg:
        head += ["best EM (step)", "norm of decayed W", "stopped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cost = (f"{r['ms_per_step'] / ref['ms_per_step']:.2f}" if ref and ref["ms_per_step"]
                else "-")
        mlm = (f"{r['mlm_loss_before']:.2f} -> {r['mlm_loss_after']:.2f}"
               if r.get("mlm_loss_before") is not None else "-")
        cells = [r.get("name", r["strategy"]),
                 f"{r['trainable']:,} ({100 * r['trainable_share']:.1f}%)",
                 str(r["steps"]), f"{r['ms_per_step']:.0f}", cost, f"{r['seconds']:.0f}",
                 " / ".join(f"{e['loss']:.3f}" for e in r["epochs"]),
                 f"{r['em']:.1f}", f"{r['f1']:.1f}"]
        cells += [f"{r['per_type'][t]['em']:.1f}" if t in r["per_type"] else "-"
                  for t in types]
        cells.append(mlm)
        if reg:
            ev = r.get("evaluations") or r["epochs"]
            top = max(ev, key=lambda e: e["em"])
            cells += [f"{top['em']:.1f} ({top['step']})",
                      f"{r['weight_norm']:.2f}" if r.get("weight_norm") else "-", r["stopped"]]
        lines.append("| " + " | ".join(cells) + " |")
    out = ["## " + ("Strategies" if res["kind"] == "strategies" else "Regularisation"), "",
           f"{res['train_examples']} train / {res['valid_examples']} valid examples; "
           f"pretraining {res['pretrain_seconds']:.0f} s "
           f"({'cached' if res['pretrain'].get('reused') else 'trained now'}: "
           f"{res['pretrain']['steps']} steps, MLM val loss {res['pretrain']['val_loss']:.3f},"
           f" masked-token accuracy {res['pretrain']['val_acc']:.3f}), fine-tuning "
           f"{res['finetune_seconds']:.0f} s, total {res['total_seconds']:.0f} s. "
           f"cost = ms/step relative to full fine-tuning.", ""] + lines
    b = res["baselines"]
    out += ["", "Baselines on the same validation set (no model):", "",
            "| baseline | EM | F1 | " + " | ".join(f"EM {t}" for t in types) + " |",
            "|---|---|---|" + "---|" * len(types)]
    for name, sc in b.items():
        pt = sc.get("per_type", {})
        out.append(f"| {name} | {sc['em']:.1f} | {sc['f1']:.1f} | " + " | ".join(
            f"{pt[t]['em']:.1f}" if t in pt else "-" for t in types) + " |")
    best = max(sc["em"] for sc in b.values()) if b else 0.0
    out += ["", f"Best baseline EM: {best:.1f}. A model shows it reads the question only "
            f"where it beats every baseline."]
    return "\n".join(out) + "\n"


def _regularised(r) -> bool:
    c = r["config"]
    return bool(c["weight_decay"] or c["l2"] or c["dropout"] or c["patience"] or c["augment"])


def write_compare(res: dict, out: str) -> tuple:
    os.makedirs(out, exist_ok=True)
    md = os.path.join(out, "compare.md")
    with open(md, "w") as f:
        f.write(markdown(res))
    js = os.path.join(out, "compare.json")
    with open(js, "w") as f:
        json.dump(res, f, indent=1)
    png = os.path.join(out, "compare.png")
    bar_chart(res, png)
    return md, js, png


def bar_chart(res: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["rows"]
    names = [r.get("name", r["strategy"]) for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
    y = range(len(rows))
    ax.barh(list(y), [r["em"] for r in rows], color="tab:blue", label="EM")
    ax.barh([i + 0.35 for i in y], [r["f1"] for r in rows], height=0.3, color="tab:orange",
            label="F1")
    for name, sc in res["baselines"].items():
        ax.axvline(sc["em"], ls=":", lw=1, color="grey")
    if res["baselines"]:
        top = max(res["baselines"].items(), key=lambda kv: kv[1]["em"])
        ax.axvline(top[1]["em"], ls="--", color="red", label=f"best baseline: {top[0]}")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("validation %")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("QA fine-tuning: " + res["kind"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["markdown", "write_compare", "bar_chart"]
