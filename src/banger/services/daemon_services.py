"""The daemon's services, as the API sees them: one object of each, built once.

Owns: ``DaemonServices``, the typed bundle ``daemon/main.py`` builds (the composition
root) and hands to ``banger.api.app.create_app``. Must not: build anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from banger.services.catalog_fetch import CatalogService
from banger.services.context import DaemonContext
from banger.services.image_pulls import ImagePullService
from banger.services.images import ImageService
from banger.services.kernel_pull import KernelPullService
from banger.services.kernels import KernelService
from banger.services.pool import PoolService
from banger.services.vm_exec import ExecService
from banger.services.vm_files import VmFileService
from banger.services.vms import VmService


@dataclass(frozen=True)
class DaemonServices:
    ctx: DaemonContext
    vms: VmService
    images: ImageService
    image_pulls: ImagePullService
    kernels: KernelService
    kernel_pulls: KernelPullService
    catalog: CatalogService
    pool: PoolService
    execs: ExecService
    files: VmFileService
