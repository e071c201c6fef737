"""Verify LLaVA training assets where they land: model directories, the pretrain JSON and its images.

Standalone on purpose: Python 3 standard library only, so the assets role can copy this file to a server
(or into the container) and run it with whatever `python3` is there:

    python3 assets_verify.py weights DIR [--kind llm|vision_tower] [--deep]
    python3 assets_verify.py pretrain-json FILE --image-root DIR [--sample N] [--expect-records N]

Each prints one JSON object (`ok`, `path`, `kind`, `errors`, `details`) and exits 0 when the asset is
sound, 1 when it is not, 2 on a usage error. Every error names the file it is about.

What is checked:
- weights: config.json parses; the tokenizer (LLM) or preprocessor_config.json (vision tower) is there;
  every shard the index names exists and is whole (a safetensors file's size matches its header; a torch
  zip checkpoint's central directory is intact; `--deep` also checks every CRC); the index's tensors are
  all in their shards; `metadata.total_size` matches the safetensors headers.
- pretrain JSON: parses, is a list, record count; every record has `image` and two conversation turns, the
  first with `<image>`; the images of a sample of records exist and are not empty.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGE_TOKEN = "<image>"
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
MAX_LISTED = 5  # problems listed one by one before summarising the rest as a count


@dataclass
class VerifyResult:
    """The outcome for one asset. `error` is the first problem, for one-line messages."""

    path: str
    kind: str
    errors: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> str | None:
        return self.errors[0] if self.errors else None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


# --- model directories ----------------------------------------------------------------------------------


def verify_weights(model_dir: str, kind: str = "llm", deep: bool = False) -> VerifyResult:
    """Check a Hugging Face model directory. `kind`: `llm` (needs a tokenizer) or `vision_tower` (needs
    preprocessor_config.json)."""
    result = VerifyResult(path=str(model_dir), kind=kind)
    if kind not in ("llm", "vision_tower"):
        result.errors.append(f"{model_dir}: unknown asset kind {kind!r} (llm or vision_tower)")
        return result
    if not os.path.isdir(model_dir):
        result.errors.append(f"{model_dir}: not a directory")
        return result

    config = _read_json(os.path.join(model_dir, "config.json"), result)
    if isinstance(config, dict):
        result.details["model_type"] = config.get("model_type")
        if not config.get("model_type") and not config.get("architectures"):
            result.errors.append(f"{os.path.join(model_dir, 'config.json')}: no model_type or architectures")
    elif config is not None:
        result.errors.append(f"{os.path.join(model_dir, 'config.json')}: not a JSON object")

    if kind == "llm":
        _check_tokenizer(model_dir, result)
    else:
        _read_json(os.path.join(model_dir, "preprocessor_config.json"), result)

    _check_weight_files(model_dir, result, deep)
    return result


def _check_tokenizer(model_dir: str, result: VerifyResult) -> None:
    present = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(model_dir, name))]
    if not present:
        result.errors.append(f"{model_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
        return
    result.details["tokenizer"] = present
    if "tokenizer.json" in present:
        _read_json(os.path.join(model_dir, "tokenizer.json"), result)
    elif os.path.getsize(os.path.join(model_dir, "tokenizer.model")) == 0:
        result.errors.append(f"{os.path.join(model_dir, 'tokenizer.model')}: empty file")
    config_path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(config_path):
        _read_json(config_path, result)


def _check_weight_files(model_dir: str, result: VerifyResult, deep: bool) -> None:
    index_path = next(
        (os.path.join(model_dir, n) for n in INDEX_FILES if os.path.isfile(os.path.join(model_dir, n))), None
    )
    if index_path is None:
        single = next((n for n in SINGLE_FILES if os.path.isfile(os.path.join(model_dir, n))), None)
        if single is None:
            result.errors.append(
                f"{model_dir}: no weights ({', '.join(INDEX_FILES)} or {', '.join(SINGLE_FILES)})"
            )
            return
        path = os.path.join(model_dir, single)
        names = _check_shard(path, result, deep)
        result.details.update(shards=[single], bytes=os.path.getsize(path), tensors=len(names or ()))
        return

    index = _read_json(index_path, result)
    if index is None:
        return
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        result.errors.append(f"{index_path}: no weight_map")
        return
    shards = sorted(set(weight_map.values()))
    result.details.update(index=os.path.basename(index_path), shards=shards, tensors=len(weight_map))
    total_bytes, tensor_bytes, all_safetensors = 0, 0, True
    for shard in shards:
        path = os.path.join(model_dir, shard)
        if not os.path.isfile(path):
            result.errors.append(f"{path}: shard named by {os.path.basename(index_path)} is missing")
            all_safetensors = False
            continue
        total_bytes += os.path.getsize(path)
        found = _check_shard(path, result, deep)
        if found is None:
            all_safetensors = False
            continue
        expected = [name for name, file in weight_map.items() if file == shard]
        missing = [name for name in expected if name not in found]
        if missing:
            result.errors.append(
                f"{path}: {len(missing)} tensor(s) of the index not in the shard: {missing[:3]}"
            )
        if shard.endswith(".safetensors"):
            tensor_bytes += sum(found.values())
        else:
            all_safetensors = False
    result.details["bytes"] = total_bytes
    declared = (index.get("metadata") or {}).get("total_size")
    if all_safetensors and isinstance(declared, int) and declared != tensor_bytes:
        result.errors.append(
            f"{index_path}: metadata.total_size {declared}, but the shards hold {tensor_bytes} tensor bytes"
        )


def _check_shard(path: str, result: VerifyResult, deep: bool) -> dict[str, int] | None:
    """The tensors of one weight file (name -> bytes), or None with an error recorded when it is damaged."""
    if path.endswith(".safetensors"):
        return _check_safetensors(path, result)
    return _check_torch_zip(path, result, deep)


def _check_safetensors(path: str, result: VerifyResult) -> dict[str, int] | None:
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise ValueError(f"header of {header_len} bytes does not fit in {size} bytes")
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError) as error:
        result.errors.append(f"{path}: unreadable safetensors file: {error}")
        return None
    tensors, end = {}, 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, stop = spec["data_offsets"]
        tensors[name] = stop - begin
        end = max(end, stop)
    expected = 8 + header_len + end
    if size != expected:
        result.errors.append(
            f"{path}: {size} bytes but its header describes {expected}"
            + (" (truncated)" if size < expected else " (trailing data)")
        )
        return None
    return tensors


def _check_torch_zip(path: str, result: VerifyResult, deep: bool) -> dict[str, int] | None:
    """torch.save's zip format: an intact central directory (a cut file loses it) whose members fit in
    the file; with `deep`, every member's CRC. Tensor names are in the pickle; only sizes are known here."""
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                if info.header_offset + info.compress_size > size:
                    raise zipfile.BadZipFile(f"member {info.filename} runs past the end of the file")
            if deep:
                bad = archive.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"CRC mismatch in member {bad}")
    except (OSError, zipfile.BadZipFile) as error:
        result.errors.append(f"{path}: damaged torch checkpoint ({size} bytes): {error}")
        return None
    if not any(info.filename.endswith("data.pkl") for info in members):
        result.errors.append(f"{path}: zip without data.pkl, not a torch checkpoint")
        return None
    # Without unpickling, the index's tensor names cannot be matched; report storages, trust the names.
    return _AnyName({info.filename: info.file_size for info in members if "/data/" in info.filename})


class _AnyName(dict):  # plain dict: servers may run Python < 3.9, where dict[...] cannot be subclassed
    """Storage sizes of a torch zip, which answers `in` for every tensor name (names are in the pickle)."""

    def __contains__(self, key: object) -> bool:
        return True


# --- pretrain JSON and images ---------------------------------------------------------------------------


def verify_pretrain_json(
    path: str,
    image_root: str | None = None,
    sample: int | None = 256,
    expect_records: int | None = None,
    seed: int = 0,
) -> VerifyResult:
    """Check a `blip_laion_cc_sbu_558k.json`-format file and, when `image_root` is given, that the images of
    `sample` records (all with None) exist under it."""
    result = VerifyResult(path=str(path), kind="pretrain_json")
    records = _read_json(path, result)
    if records is None:
        return result
    if not isinstance(records, list):
        result.errors.append(f"{path}: expected a JSON list of records, found {type(records).__name__}")
        return result
    result.details["records"] = len(records)
    if expect_records is not None and len(records) != expect_records:
        result.errors.append(f"{path}: {len(records)} records, expected {expect_records}")
    if not records:
        result.errors.append(f"{path}: no records")
        return result

    bad: list[str] = []
    for position, record in enumerate(records):
        problem = _record_problem(record)
        if problem:
            label = record.get("id", position) if isinstance(record, dict) else position
            bad.append(f"record {position} (id {label}): {problem}")
    if bad:
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        result.errors.append(f"{path}: {len(bad)} malformed record(s): {'; '.join(bad[:MAX_LISTED])}{more}")
    result.details["malformed_records"] = len(bad)

    if image_root is not None:
        _check_images(path, records, image_root, sample, seed, result)
    return result


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not an object"
    image = record.get("image")
    if not isinstance(image, str) or not image:
        return "no image"
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "fewer than two conversation turns"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
        return "a conversation turn without a value"
    if IMAGE_TOKEN not in turns[0]["value"]:
        return f"the first turn has no {IMAGE_TOKEN}"
    return None


def _check_images(
    path: str, records: list[Any], image_root: str, sample: int | None, seed: int, result: VerifyResult
) -> None:
    if not os.path.isdir(image_root):
        result.errors.append(f"{image_root}: image folder missing (named for {path})")
        return
    named = [r["image"] for r in records if isinstance(r, dict) and isinstance(r.get("image"), str)]
    chosen = named if sample is None or sample >= len(named) else random.Random(seed).sample(named, sample)
    missing = []
    for relative in chosen:
        image_path = os.path.join(image_root, relative)
        if not os.path.isfile(image_path) or os.path.getsize(image_path) == 0:
            missing.append(image_path)
    result.details.update(images_checked=len(chosen), images_missing=len(missing))
    if missing:
        more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
        result.errors.append(
            f"{path}: {len(missing)} of {len(chosen)} sampled images missing or empty under {image_root}: "
            f"{', '.join(missing[:MAX_LISTED])}{more}"
        )


# --- helpers and command line ---------------------------------------------------------------------------


def _read_json(path: str, result: VerifyResult) -> Any:
    """The parsed file, or None with an error naming the file recorded."""
    if not os.path.isfile(path):
        result.errors.append(f"{path}: missing")
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        result.errors.append(f"{path}: not valid JSON: {error}")
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assets_verify.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights", help="a Hugging Face model directory")
    weights.add_argument("path")
    weights.add_argument("--kind", choices=("llm", "vision_tower"), default="llm")
    weights.add_argument("--deep", action="store_true", help="also check every CRC of torch zip shards")
    data = commands.add_parser("pretrain-json", help="the pretrain JSON and its images")
    data.add_argument("path")
    data.add_argument("--image-root")
    data.add_argument("--sample", type=int, default=256, help="records whose image is checked; 0 = all")
    data.add_argument("--expect-records", type=int)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 2 if exit_.code else 0
    if args.command == "weights":
        result = verify_weights(args.path, kind=args.kind, deep=args.deep)
    else:
        result = verify_pretrain_json(
            args.path, args.image_root, sample=args.sample or None, expect_records=args.expect_records
        )
    print(json.dumps(result.to_dict(), sort_keys=True))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
