"""Build of rga_ops and its compiled extension rga_ops._C.

C++ (CPU) kernels are always built. CUDA kernels (csrc/cuda/*.cu, *.cpp) are built when
RGA_OPS_CUDA=1, or when RGA_OPS_CUDA=auto (the default) finds a CUDA build of
torch, nvcc and a GPU; RGA_OPS_CUDA=0 turns them off. MAX_JOBS limits the
parallel compile jobs (read by torch's ninja build).

The extension must be compiled against the very torch that will import it. Under
pip's build isolation the build runs in a throw-away environment, so this file
asks the target interpreter which torch it has and requires exactly that version
for the build (see `_torch_build_requirement`). With `--no-build-isolation` the
torch of the current environment is used directly. Either way the torch version
is recorded next to the extension, and rga_ops refuses to load an extension built
for another torch (rga_ops.backends() says why) instead of crashing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
LOG_PREFIX = "rga_ops build:"


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def _target_torch_version() -> str | None:
    """Version of torch installed for the interpreter running the build, seen
    without pip's isolation overlay (which works through PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = "import importlib.metadata as m; print(m.version('torch'))"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def _torch_build_requirement() -> str:
    version = _target_torch_version()
    if version is None:
        log("the target environment has no torch yet: building against the torch pip resolves")
        return "torch"
    log(f"the target environment runs torch {version}: building against the same version")
    return f"torch=={version}"


def _cuda_include_dirs(toolkit_include: str) -> list[str]:
    """The CUDA library headers (cuBLAS, cuSPARSE, cuSOLVER) that ATen's CUDA headers
    include, where the toolkit lacks them: a folder of links to just those headers in torch's
    nvidia-* wheels. Never the wheels' include folders themselves: they also hold the CUDA
    runtime headers of torch's CUDA version, which nvcc refuses when its own version differs
    (torch built for CUDA 13.2, nvcc 13.0)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    wheel_includes = sorted({d for r in roots for d in glob.glob(os.path.join(r, "*", "include"))})
    present = set(os.listdir(toolkit_include)) if os.path.isdir(toolkit_include) else set()
    links = os.path.join(ROOT, "build", "cuda-headers-from-wheels")
    shutil.rmtree(links, ignore_errors=True)
    os.makedirs(links)
    for include in wheel_includes:
        for name in sorted(os.listdir(include)):
            if name not in present:
                present.add(name)
                os.symlink(os.path.join(include, name), os.path.join(links, name))
    log(f"{len(os.listdir(links))} CUDA library headers that the toolkit lacks linked from torch's wheels into {links}")
    return [links]


def _nvcc_toolkit_root() -> str | None:
    """The CUDA toolkit folder of the nvcc on PATH, as nvcc itself reports it (`_HERE_`, its
    bin folder, in `--dryrun` output). torch takes CUDA_HOME to be the parent of nvcc's folder,
    which is wrong where nvcc is a wrapper script (e.g. /usr/local/bin/nvcc exec'ing
    /usr/local/cuda-13.0/bin/nvcc): that folder holds neither the headers nor the libraries."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    probe = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-E", os.devnull], capture_output=True, text=True,
                           check=False)
    for line in (probe.stdout + probe.stderr).splitlines():
        if line.startswith("#$ _HERE_="):
            root = os.path.dirname(os.path.normpath(line.split("=", 1)[1].strip()))
            return root if os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) else None
    return None


def _cuda_decision(torch, cuda_home: str | None) -> tuple[bool, str]:
    mode = os.environ.get("RGA_OPS_CUDA", "auto").strip().lower()
    have_torch_cuda = torch.version.cuda is not None
    if mode in ("0", "off", "false", "no"):
        return False, "RGA_OPS_CUDA=0"
    if mode in ("1", "on", "true", "yes"):
        if not have_torch_cuda:
            raise SystemExit(f"{LOG_PREFIX} RGA_OPS_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        if cuda_home is None:
            raise SystemExit(f"{LOG_PREFIX} RGA_OPS_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return True, "RGA_OPS_CUDA=1"
    if mode != "auto":
        raise SystemExit(f"{LOG_PREFIX} RGA_OPS_CUDA must be 0, 1 or auto, got {mode!r}")
    if not have_torch_cuda:
        return False, f"RGA_OPS_CUDA=auto and torch {torch.__version__} is a CPU-only build"
    if cuda_home is None:
        return False, "RGA_OPS_CUDA=auto and no nvcc was found; set CUDA_HOME to enable"
    if not torch.cuda.is_available():
        return False, "RGA_OPS_CUDA=auto and no GPU is visible; RGA_OPS_CUDA=1 forces the CUDA build"
    return True, "RGA_OPS_CUDA=auto found a CUDA torch, nvcc and a GPU"


def _extension_setup() -> dict:
    import torch

    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.environ.get(
            "RGA_OPS_CUDA", "auto").strip().lower() not in ("0", "off", "false", "no"):
        root = _nvcc_toolkit_root()
        if root is not None:  # read by torch.utils.cpp_extension when it is imported, just below
            os.environ["CUDA_HOME"] = root
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    import importlib.metadata

    target, building = _target_torch_version(), importlib.metadata.version("torch")
    if target is not None and target != building:
        raise SystemExit(
            f"{LOG_PREFIX} building against torch {building} but the target environment "
            f"runs torch {target}; the extension would not load there. Install with "
            "`pip install --no-build-isolation .` or make both torch versions equal."
        )
    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))]
    sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    # csrc/cuda: .cu files hold device code (nvcc); .cpp files register CUDA kernels composed of
    # ATen ops, host code only (the C++ compiler, much faster to build).
    cuda_sources = [os.path.relpath(p, ROOT) for ext in ("cu", "cpp")
                    for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", f"*.{ext}")))]

    with_cuda, why = _cuda_decision(torch, CUDA_HOME)
    if with_cuda and not cuda_sources:
        with_cuda, why = False, why + ", but csrc/cuda has no sources yet"
    log(f"torch {torch.__version__}; CUDA kernels {'ON' if with_cuda else 'OFF'}: {why}")

    # No FP traps or errno from math functions (as torch itself is built): lets loops with
    # branch-free selects and polynomial exp vectorise.
    cxx_flags = ["-O3", "-fopenmp", "-DNDEBUG", "-fno-trapping-math", "-fno-math-errno"]
    kwargs: dict = dict(extra_link_args=["-fopenmp"])
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "(the visible GPUs)")
        log(f"CUDA_HOME={CUDA_HOME}; TORCH_CUDA_ARCH_LIST={arch_list}")
        include_dirs = _cuda_include_dirs(os.path.join(CUDA_HOME, "include"))
        ext = CUDAExtension(
            "rga_ops._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            **kwargs,
        )
    else:
        ext = CppExtension("rga_ops._C", sources, extra_compile_args={"cxx": cxx_flags}, **kwargs)

    build_info = {
        "torch": torch.__version__,
        "cuda": with_cuda,
        "cuda_version": torch.version.cuda if with_cuda else None,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "decision": why,
    }

    class BuildWithInfo(BuildExtension):
        """Writes _build_info.json beside the compiled library: what it was built against."""

        def build_extension(self, extension):
            super().build_extension(extension)
            target_dir = os.path.dirname(self.get_ext_fullpath(extension.name))
            with open(os.path.join(target_dir, "_build_info.json"), "w") as f:
                json.dump(build_info, f, indent=2)

        def copy_extensions_to_source(self):
            # Editable and --inplace builds copy the library into the source tree: the info goes with it.
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for extension in self.extensions:
                inplace_file, regular_file = self._get_inplace_equivalent(build_py, extension)
                self.copy_file(os.path.join(os.path.dirname(regular_file), "_build_info.json"),
                               os.path.join(os.path.dirname(inplace_file), "_build_info.json"))

    return dict(ext_modules=[ext], cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)})


def _metadata_only() -> bool:
    """True while pip only asks for build requirements or metadata (torch may be absent)."""
    return all(arg in ("egg_info", "dist_info") or arg.startswith("-") for arg in sys.argv[1:])


try:
    import torch  # noqa: F401

    options = _extension_setup()
except ImportError:
    if not _metadata_only():
        raise SystemExit(
            f"{LOG_PREFIX} torch is needed to build rga_ops. Install torch first, or let pip "
            "build in isolation (plain `pip install .`)."
        )
    options = dict(setup_requires=[_torch_build_requirement()])


def _license() -> dict:
    """MIT, as setuptools >= 77 wants it (an SPDX expression; it deprecates the older form) or as
    older ones do (which reject the expression): the GPU machines build with their own setuptools."""
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    return {"license_expression": "MIT"} if major >= 77 else {"license": "MIT"}


setup(
    packages=find_packages(include=["rga_ops", "rga_ops.*"]),
    **_license(),
    **options,
)
