"""Reading and writing PyTorch checkpoint files safely, with errors that name the file.

A checkpoint is data, never code:

- ``.pth``/``.pt``/``.bin`` files are read with ``torch.load(path, map_location="cpu",
  weights_only=True)``. A pickle that references anything beyond tensors and plain
  containers (a class, a function such as ``os.system``) is refused with
  ``UnsafeCheckpointError``; we never retry with ``weights_only=False``.
- ``.safetensors`` files (the extension in any case, or a file of another name that
  holds one: ``is_safetensors``) are read with ``safetensors`` (no pickle at all).
- TorchScript archives (OpenAI's CLIP files are TorchScript) hold TorchScript code
  that ``torch.jit.load`` compiles and can run, so they are refused unless the
  caller opts in with ``allow_torchscript=True`` (CLI: ``--allow-torchscript``);
  then ``torch.jit.load(path, map_location="cpu").state_dict()`` is used and
  nothing else of the archive is called. Only opt in for files you trust.
- Truncated or corrupt files raise ``CorruptCheckpointError`` naming the file,
  whichever format (torch's zip format, the legacy pickle format, safetensors) and
  wherever the file was cut.

Writing is all-or-nothing (``mami_jax.runtime.atomic_files.write_atomic``: a
temporary in the same folder, renamed into place), so an interrupted export never
leaves a half-written file under the final name, and the file gets the mode the
user's umask asks for (0666 minus the umask), not a temporary's private 0600.
"""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
from typing import Any, Mapping

import numpy as np

from mami_jax.runtime.atomic_files import write_atomic


#: First bytes of a zip archive (torch.save's default format).
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read as a state dict."""


class UnsafeCheckpointError(CheckpointFileError):
    """The file carries code (a pickle of arbitrary objects, or TorchScript)."""


class CorruptCheckpointError(CheckpointFileError):
    """The file is truncated, empty or otherwise unreadable."""


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading or writing PyTorch checkpoints needs torch: install "
                          "mami_jax's torch extra (`pip install -e \".[torch]\"` in a "
                          "checkout; a CPU build of torch is enough)") from e
    return torch


#: The most bytes a safetensors header may have (the format's own limit).
_SAFETENSORS_MAX_HEADER = 100_000_000


def safetensors_name(path: str) -> bool:
    """Whether ``path`` is named as a safetensors file: its extension, in any case. The test
    the writer and the command line share (the format written follows the name): the
    command line accepted ``--out m.SAFETENSORS`` while the writer, testing the case, wrote
    a torch pickle under that name."""
    return os.fspath(path).lower().endswith(".safetensors")


def holds_safetensors(path: str) -> bool:
    """Whether the file ``path`` begins as a safetensors file does, whatever its name: an
    8-byte little-endian header length (within the format's limit) and the header's JSON
    object, ``{``. A torch.save zip begins ``PK``, a legacy torch pickle ``\\x80``, so
    neither is taken for one; a safetensors file cut short still is (and is then named as
    a truncated safetensors file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= struct.unpack("<Q", head[:8])[0] <= _SAFETENSORS_MAX_HEADER


def is_safetensors(path: str) -> bool:
    """Whether ``path`` is read as a safetensors file: named so (``safetensors_name``), or
    an existing file of another name that holds one (``holds_safetensors``). The test every
    reader shares: a ``.SafeTensors`` file (a copy from Windows) and a safetensors file
    renamed without its extension (``model_v2``) went to ``torch.load``, whose error called
    them 'not a weights-only checkpoint'."""
    return safetensors_name(path) or (os.path.isfile(path) and holds_safetensors(path))


def is_torchscript_archive(path: str) -> bool:
    """A zip whose entries include TorchScript code (``<name>/code/...``, constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def load_file(path: str, *, allow_torchscript: bool = False, mmap: bool = False) -> Any:
    """Loads a checkpoint file as data: a dict (possibly nested) of tensors/arrays.

    ``.safetensors`` -> flat dict of torch tensors (numpy arrays if torch is absent);
    other files -> whatever the weights-only unpickler returns. ``mmap``: a ``.pth`` in
    torch.save's zip format is mapped, not read, so only the tensors used are read (for a
    look at the plain values beside the weights).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a folder, not a checkpoint file (a converter folder "
                                "is read by convert.checkpoint_dir.load_params, or "
                                "Embedder.from_export)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CorruptCheckpointError(f"{path}: file is empty")
    if is_safetensors(path):
        return _load_safetensors(path)
    if is_torchscript_archive(path):
        if not allow_torchscript:
            raise UnsafeCheckpointError(
                f"{path} is a TorchScript archive: it contains code that torch.jit.load would "
                "compile. Refusing to load it by default. If you trust the file (e.g. the "
                "official OpenAI CLIP download), pass allow_torchscript=True "
                "(CLI: --allow-torchscript).")
        torch = _torch()
        try:
            with warnings.catch_warnings():   # torch deprecates TorchScript; the user asked
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise CorruptCheckpointError(f"{path}: cannot read TorchScript archive: {e}") from e
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    with open(path, "rb") as f:
        head = f.read(4)
    if _ZIP_MAGIC.startswith(head) and not zipfile.is_zipfile(path):
        # torch.save's default format is a zip archive; one without its central directory
        # at the end was cut short (torch's own reader fails on it with varying errors).
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt checkpoint file (a zip archive, torch.save's "
            "default format, without its central directory: the file was cut short)")
    torch = _torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True,
                          mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        msg = str(e)
        lines = [line.strip() for line in msg.splitlines() if line.strip()]
        if "Weights only load failed" in msg:
            detail = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
            detail = detail[0] if detail else lines[-1]
            if "GLOBAL" in detail:
                raise UnsafeCheckpointError(
                    f"{path} carries code or objects, not just tensors; refusing to load it "
                    f"(a checkpoint must be plain data). {detail}") from e
            raise UnsafeCheckpointError(
                f"{path} is not a weights-only checkpoint (it was not written by torch.save "
                f"of tensors and plain containers); refusing to load it. {detail}") from e
        raise CorruptCheckpointError(f"{path}: truncated or corrupt checkpoint file "
                                     f"(unreadable pickle: {lines[0] if lines else msg})") from e
    except (PermissionError, IsADirectoryError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - see below
        # Reading plain data can fail only because the bytes are wrong. A cut or damaged
        # file surfaces as EOFError, RuntimeError, OSError (torch's zip reader),
        # struct.error or IndexError (the legacy format's unpickler), depending on where
        # it was cut: all of them are the same corruption.
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt checkpoint file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'unexpected end of file'})") from e


def _load_safetensors(path: str) -> dict:
    try:
        import safetensors
    except ImportError as e:  # pragma: no cover
        raise ImportError("reading .safetensors needs `pip install safetensors`") from e
    try:
        _torch()
        framework = "pt"
    except ImportError:  # pragma: no cover
        framework = "numpy"
    try:
        out = {}
        with safetensors.safe_open(path, framework=framework) as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
        return out
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CorruptCheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e


def read_safetensors_metadata(path: str) -> dict:
    import safetensors
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001
        raise CorruptCheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e


def _as_tensors(state_dict: Mapping[str, Any]):
    torch = _torch()

    def tensor(v):
        if isinstance(v, torch.Tensor):
            return v
        v = np.ascontiguousarray(v)
        if not v.flags.writeable:  # torch.from_numpy wants a writable buffer
            v = v.copy()
        if v.dtype.name == "bfloat16":  # ml_dtypes bfloat16 (jax): same bits in torch
            return torch.from_numpy(v.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(v)

    return {k: tensor(v) for k, v in state_dict.items()}


def save_state_dict(path: str, state_dict: Mapping[str, Any], *,
                    extra: Mapping[str, str] | None = None) -> None:
    """Writes ``state_dict`` all-or-nothing with umask permissions; the format follows
    the extension.

    ``.safetensors`` (any case): a flat tensor file, ``extra`` stored as string metadata.
    Anything else: ``torch.save({"model": state_dict, **extra})`` (the released
    checkpoint's layout is ``{"model": ...}``; ``extra`` holds plain strings only,
    so the file still loads with ``weights_only=True``).
    """
    path = os.fspath(path)
    tensors = _as_tensors(state_dict)

    def write(tmp):
        if safetensors_name(path):     # the name, not what a file of that name holds now
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                      metadata=dict(extra or {}))
        else:
            _torch().save({"model": tensors, **dict(extra or {})}, tmp)

    write_atomic(path, write)
