"""`guard watermark generate|posthoc`: watermarked generation and post-hoc marking of existing images.

    guard watermark generate --prompt "a big red disc in the upper left" -n 4 --out wm/
    guard watermark posthoc photo1.png photo2.jpg --out marked/        # 30 dB, or round trip - 3 dB

Both write PNGs plus `manifest.jsonl` (one `guard.watermark.ManifestRow` per image, the same keys in both
commands) into --out, print the PNG paths on stdout and log to stderr. Inputs of posthoc are read by
`guard.imageio`, exactly as `guard detect` reads them. With `--sign CERT_CHAIN.pem --sign-key KEY.pem
[--tsa URL]` each PNG also carries signed C2PA Content Credentials naming the watermark key id (see
`guard.provenance`). Key, config and model errors exit with code 2; unreadable input images get an error
row and make posthoc exit with code 3.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError, ExitCode, ImageError
from ..keys import Geometry, resolve_key
from ..watermark.manifest import MANIFEST_NAME, ManifestRow
from ._common import (DEVICE_HELP, DTYPE_HELP, TOKENIZER_HELP, Dtype, app, exit_on_error, info, model_help,
                      resolve_model, sampling_settings)

watermark_app = typer.Typer(help="Embed watermarks: at generation time (generate) or into existing images (posthoc).",
                            no_args_is_help=True)
app.add_typer(watermark_app, name="watermark")

DEFAULT_PROMPTS = (
    "a large red circle in the top left",
    "a small blue square in the bottom right",
    "a big yellow star in the upper right and a tiny green cross in the lower left",
    "a huge purple triangle at the bottom left",
)

KeyOpt = Annotated[Path | None, typer.Option("--key", help="Key file (default: the default key, created on first "
                                                           "use under $XDG_CONFIG_HOME/guard/keys/).")]
ModelOpt = Annotated[str, typer.Option("--model", help=model_help("The generator (posthoc: its tokenizer)."))]
DeviceOpt = Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)]
DtypeOpt = Annotated[Dtype | None, typer.Option("--dtype", help=DTYPE_HELP)]
SignOpt = Annotated[Path | None, typer.Option("--sign", help="Certificate chain (PEM, signer first): embed signed C2PA "
                                                             "Content Credentials in every PNG (needs --sign-key).")]
SignKeyOpt = Annotated[Path | None, typer.Option("--sign-key", help="The signer's private key (PEM, mode 0600).")]
TsaOpt = Annotated[str | None, typer.Option("--tsa", help="RFC 3161 timestamp authority URL for the signatures.")]


def _open_signer(chain: Path | None, sign_key: Path | None, tsa: str | None):
    """An `ImageSigner` checked by a test signature (before any image is made), or None without --sign."""
    if chain is None and sign_key is None:
        if tsa is not None:
            raise ConfigError("--tsa needs --sign CERT_CHAIN.pem and --sign-key KEY.pem")
        return None
    if chain is None or sign_key is None:
        raise ConfigError("--sign CERT_CHAIN.pem and --sign-key KEY.pem go together")
    from ..provenance import ImageSigner, SigningMaterial

    signer = ImageSigner(SigningMaterial.load(chain, sign_key, tsa))
    signer.check()
    info(f"signing Content Credentials as {signer.material.signer_name!r} (issuer {signer.material.issuer_name!r})")
    return signer


def _prepare_out(out: Path) -> None:
    if (out / MANIFEST_NAME).exists():
        raise ConfigError(f"{out / MANIFEST_NAME} already exists; choose another --out directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None


@watermark_app.command("generate")
def generate(
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="Prompt (repeatable); default: a few "
                                                                      "reference prompts.")] = None,
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Images per prompt.")] = 1,
    out: Annotated[Path, typer.Option("--out", help="Output directory for PNGs and manifest.jsonl.")] = Path("watermarked"),
    key: KeyOpt = None,
    sign: SignOpt = None,
    sign_key: SignKeyOpt = None,
    tsa: TsaOpt = None,
    delta: Annotated[float | None, typer.Option("--delta", help="Soft bias added to green logits (default 2.0).")] = None,
    hard: Annotated[bool, typer.Option("--hard", help="Hard green list: only green codes can be sampled.")] = False,
    model: ModelOpt = "reference",
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Seed for sampling and list indices "
                                                                   "(reproducible run).")] = None,
    cfg: Annotated[float | None, typer.Option("--cfg", help="Classifier-free guidance scale (>= 1); default: the "
                                                            "model's own (checkpoint generation config or published: "
                                                            "Janus-Pro 5, Emu3 3, LlamaGen c2i 4 / t2i 7.5, "
                                                            "reference 3).")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature (0 = greedy); "
                                                                            "default: the model's own (1).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Keep only the k most likely codes; default: the "
                                                              "model's own (LlamaGen c2i 2000 / t2i 1000, Emu3 2048, "
                                                              "else off).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1]; default: the "
                                                                "model's own (off).")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail instead of warning when sampling settings "
                                                          "defeat the watermark.")] = False,
    erased: Annotated[Path | None, typer.Option("--erased", help="Erasure delta (from `guard erase train`): generate "
                                                                 "with base weights + delta.")] = None,
) -> None:
    """Generate watermarked images: PNGs + manifest.jsonl (list index, key id, settings per image)."""
    from ..imageio import save_png
    from ..models import load
    from ..watermark import GreenLists, WatermarkProcessor

    with exit_on_error():
        if hard and delta is not None:
            raise ConfigError("--delta and --hard are exclusive: --hard replaces the soft bias")
        prompts = list(prompt) if prompt else list(DEFAULT_PROMPTS)
        _prepare_out(out)
        gen = load(model, device=device, dtype=dtype.value if dtype is not None else None)
        if erased is not None:
            from ..erasure import load_erased

            gen = load_erased(gen, erased)
        tok = gen.tokenizer
        geometry = Geometry.of(tok).to_json()
        wm_key = resolve_key(key, tok, log=info)
        settings = sampling_settings(gen, cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p)
        cfg, temperature, top_k, top_p = (settings[k] for k in ("cfg", "temperature", "top_k", "top_p"))
        proc = WatermarkProcessor(GreenLists(wm_key, tok), delta=2.0 if delta is None else delta, hard=hard,
                                  seed=seed, strict=strict)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            proc.check_sampling(temperature=temperature, top_k=top_k)
        for w in caught:
            info(f"warning: {w.message}")
        signer = _open_signer(sign, sign_key, tsa)
        info(f"generating {len(prompts) * n} image(s) with {gen.id} ({'hard' if hard else f'delta={proc.delta}'}; "
             f"cfg {cfg:g}, temperature {temperature:g}, top-k {top_k or 'off'}, top-p {top_p or 'off'})")
        codes = gen.generate(prompts, n=n, seed=seed, cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p,
                             logits_processor=[proc])
        images = tok.decode(codes)
        rec = proc.record()
        if not rec["applied"]:
            info("warning: the watermark was not applied to these images (see above); the manifest says applied=false")
        all_prompts = [p for p in prompts for _ in range(n)]
        with open(out / MANIFEST_NAME, "w", encoding="utf-8") as mf:
            for i, (img, p) in enumerate(zip(images, all_prompts)):
                name = f"{i:05d}.png"
                save_png(img, out / name)
                if signer is not None:
                    from ..provenance import generation_manifest

                    signer.sign_file(out / name, generation_manifest(
                        title=name, model_id=gen.id, key_id=wm_key.key_id, tokenizer_id=tok.id, gamma=wm_key.gamma,
                        n_lists=wm_key.n_lists, mode="hard" if rec["hard"] else f"delta={rec['delta']:g}"))
                row = ManifestRow(
                    file=name, mode="generate", index=i, prompt=p, model=gen.id, tokenizer_id=tok.id,
                    key_id=rec["key_id"], list_index=rec["list_indices"][i] if i < len(rec["list_indices"]) else None,
                    hard=rec["hard"], delta=rec["delta"], applied=rec["applied"], seed=seed, cfg=cfg,
                    temperature=temperature, top_k=top_k, top_p=top_p, geometry=geometry,
                    c2pa_signer=signer.material.signer_name if signer is not None else None)
                mf.write(row.to_json() + "\n")
                typer.echo(str(out / name))
        info(f"wrote {len(images)} image(s) and {out / MANIFEST_NAME}" + (", signed" if signer is not None else ""))
        if signer is not None:
            signer.close()


@watermark_app.command("posthoc")
def posthoc(
    images: Annotated[list[Path], typer.Argument(help="Images to watermark (any format PIL reads).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for PNGs and manifest.jsonl.")],
    key: KeyOpt = None,
    sign: SignOpt = None,
    sign_key: SignKeyOpt = None,
    tsa: TsaOpt = None,
    min_psnr: Annotated[float | None, typer.Option(
        "--min-psnr", help="An absolute PSNR floor in dB against the input; iterates below it are not kept. Default: "
                           "30 dB, or --max-drop dB below the image's own round trip through the tokenizer when "
                           "that is lower.")] = None,
    max_drop: Annotated[float, typer.Option("--max-drop", min=0.0, help="With the default floor: at most this many "
                                                                        "dB below the image's round trip.")] = 3.0,
    max_iters: Annotated[int, typer.Option("--max-iters", min=1, help="At most this many swap rounds.")] = 5,
    model: ModelOpt = "reference",
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help=TOKENIZER_HELP)] = None,
    device: DeviceOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 64,
) -> None:
    """Watermark existing images: swap red codes for their nearest green codes, keep PSNR above a floor."""
    import torch

    from ..imageio import load_image, save_png
    from ..models import load_tokenizer
    from ..watermark import GreenLists, watermark_image

    failed = 0
    with exit_on_error():
        _prepare_out(out)
        tok = load_tokenizer(resolve_model(model, tokenizer), device=device)
        wm_key = resolve_key(key, tok, log=info)
        gl = GreenLists(wm_key, tok)
        signer = _open_signer(sign, sign_key, tsa)
        size = tok.image_size
        base = dict(mode="posthoc", key_id=wm_key.key_id, tokenizer_id=tok.id, geometry=Geometry.of(tok).to_json())
        with open(out / MANIFEST_NAME, "w", encoding="utf-8") as mf:
            for start in range(0, len(images), batch_size):
                chunk = list(enumerate(images[start:start + batch_size], start))
                loaded, meta = [], []
                for i, path in chunk:
                    try:
                        img = load_image(path, size)        # the pixels `guard detect` reads from this file
                    except ImageError as e:
                        failed += 1
                        info(f"error: {path}: {e}")
                        mf.write(ManifestRow(file=None, index=i, source=str(path), error=str(e), min_psnr=min_psnr,
                                             **base).to_json() + "\n")
                        continue
                    loaded.append(img.tensor)
                    meta.append((i, path, (img.width, img.height) if img.resize != "none" else None))
                if not loaded:
                    continue
                res = watermark_image(torch.stack(loaded), gl, tok, min_psnr=min_psnr, max_drop=max_drop,
                                      max_iters=max_iters)
                for j, (i, path, original) in enumerate(meta):
                    name = f"{i:05d}_{path.stem}.png"
                    save_png(res.images[j], out / name)
                    if signer is not None:
                        from ..provenance import posthoc_manifest
                        from ..provenance.sign import mime_for

                        signer.sign_file(out / name, posthoc_manifest(
                            title=name, key_id=wm_key.key_id, tokenizer_id=tok.id, gamma=wm_key.gamma,
                            n_lists=wm_key.n_lists, resized_from=original,
                            size=size), parent=path if mime_for(path) else None)
                    p = float(res.psnr[j])
                    row = ManifestRow(
                        file=name, index=i, source=str(path), list_index=res.list_indices[j],
                        applied=bool(res.iterations[j] > 0), psnr=None if p == float("inf") else round(p, 3),
                        green_share_before=round(float(res.green_share_before[j]), 6),
                        green_share_after=round(float(res.green_share_after[j]), 6),
                        iterations=int(res.iterations[j]), resized_from=list(original) if original else None,
                        c2pa_signer=signer.material.signer_name if signer is not None else None,
                        min_psnr=round(float(res.floor[j]), 3), **base)
                    mf.write(row.to_json() + "\n")
                    if row.iterations == 0:
                        info(f"warning: {path}: no iterate kept the PSNR >= {row.min_psnr} dB while raising the "
                             f"green share; written unchanged (lower --min-psnr, or raise --max-drop, to mark it)")
                    typer.echo(str(out / name))
        info(f"wrote {len(images) - failed} image(s) and {out / MANIFEST_NAME}"
             + (f"; {failed} unreadable" if failed else "") + (", signed" if signer is not None else ""))
        if signer is not None:
            signer.close()
    if failed:
        raise typer.Exit(ExitCode.UNREADABLE)
