"""Test-only callbacks that kill or record a `lit-ppool fit` subprocess (added with --trainer.callbacks+=...).

The subprocess imports this module by name: the tests put this folder on its PYTHONPATH.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import signal
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(Callback):
    """SIGKILL the process at the end of global step ``step`` (before that step's checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            _sigkill()


class RaiseAtStep(Callback):
    """Raise a ``RuntimeError`` at the end of global step ``step``: a run that fails with an exception."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected failure at step {self.step}")


class SaveFinalState(Callback):
    """At the end of fit, write everything a resumed run must reproduce to ``path``."""

    def __init__(self, path: str = "final.pt") -> None:
        self.path = path
        self.batches_run = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches_run += 1

    def on_fit_end(self, trainer, pl_module) -> None:
        torch.save(
            {
                "global_step": trainer.global_step,
                "batches_run_in_this_process": self.batches_run,
                "state_dict": pl_module.state_dict(),
                "alpha": {name: m.alpha.detach() for name, m in pl_module.named_modules() if hasattr(m, "alpha_raw")},
                "optimizer": trainer.optimizers[0].state_dict(),
                "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
                "metrics": {k: v.detach() for k, v in trainer.callback_metrics.items()},
            },
            self.path,
        )


class _KillOnFirstWrite(io.RawIOBase):
    """A writable file that writes half of the first chunk it is given, then SIGKILLs the process."""

    def __init__(self, file, marker: Path) -> None:
        self._file = file
        self._marker = marker

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # no file descriptor: shutil copies through write() instead of sendfile
        raise io.UnsupportedOperation("fileno")

    def write(self, data) -> int:
        data = bytes(data)
        self._file.write(data[: max(1, len(data) // 2)])
        self._file.flush()
        self._marker.write_text(f"killed while writing {Path(self._file.name).name}")
        _sigkill()
        return len(data)  # not reached

    def close(self) -> None:
        self._file.close()
        super().close()


class TornCheckpointWrite(Callback):
    """SIGKILL the process halfway through the first write into ``checkpoint_dir`` of its second checkpoint.

    Before the second save starts, the SHA-256 of the ``last.ckpt`` on disk (written by the
    first save) goes to ``<checkpoint_dir>/../last_before_kill.sha256``; the kill point goes
    to ``.../kill_point.txt``. If the save writes nothing into ``checkpoint_dir`` (the
    file is staged elsewhere and renamed in), the process is killed as soon as the save ends.

    With ``tmpdir_on_other_filesystem``, renames between that folder (the process's
    ``$TMPDIR``) and any other folder fail with ``EXDEV``, exactly as they do when ``$TMPDIR``
    is a different mount than the checkpoint folder (node-local ``/tmp``, shared checkpoint
    storage): whoever stages a checkpoint there must then copy it into place.
    """

    def __init__(self, checkpoint_dir: str, tmpdir_on_other_filesystem: str | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir).resolve()
        self.other_filesystem = Path(tmpdir_on_other_filesystem).resolve() if tmpdir_on_other_filesystem else None
        self.saves = 0
        self.armed = False
        self.marker = self.checkpoint_dir.parent / "kill_point.txt"

    def setup(self, trainer, pl_module, stage) -> None:
        real_open = builtins.open

        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            writing = any(flag in mode for flag in "wxa+")
            if self.armed and writing and isinstance(file, (str, os.PathLike)) and Path(file).resolve().parent == self.checkpoint_dir:
                return _KillOnFirstWrite(handle, self.marker)
            return handle

        builtins.open = open_
        if self.other_filesystem is not None:
            for name in ("rename", "replace"):
                setattr(os, name, self._cross_device_guard(getattr(os, name)))

    def _cross_device_guard(self, rename):
        def guarded(src, dst, *args, **kwargs):
            inside = [Path(p).resolve().is_relative_to(self.other_filesystem) for p in (src, dst)]
            if inside[0] != inside[1]:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
            return rename(src, dst, *args, **kwargs)

        return guarded

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saves += 1
        if self.saves == 2:
            last = self.checkpoint_dir / "last.ckpt"
            digest = hashlib.sha256(last.read_bytes()).hexdigest()
            (self.checkpoint_dir.parent / "last_before_kill.sha256").write_text(digest)
            self.armed = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.armed:  # the second save finished without writing into the checkpoint folder
            self.marker.write_text("killed after the save")
            _sigkill()
