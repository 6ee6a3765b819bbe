#!/usr/bin/env bash
# One-command, idempotent set-up of one engine's environment.
#   ENGINE=horovod (default): OS packages (OpenMPI), .venv, TensorFlow 2.15, the harness, Horovod.
#   ENGINE=tf:                .venv-tf, TensorFlow 2.21 with Keras 3, the harness; no MPI.
#   WITH_POSTGRES=1:          also Debian's PostgreSQL server, for the lab's tracking server
#                             (harness tracking serve --store postgres).
# Every step says what it does; a step whose result is already there is skipped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE="${ENGINE:-horovod}"
HOROVOD_VERSION="0.28.1"
case "$ENGINE" in
    horovod) VENV="$ROOT/.venv"
             SUPPORTED_PYTHONS="3.11 3.10" ;;  # TF 2.15 and Horovod 0.28.1 stop at 3.11
    tf)      VENV="$ROOT/.venv-tf"
             SUPPORTED_PYTHONS="3.11 3.12 3.13 3.10" ;;  # TF 2.21; MLflow 3.17 needs >= 3.10
    *) printf 'setup: error: ENGINE=%s: use horovod or tf\n' "$ENGINE" >&2; exit 2 ;;
esac

step() { printf '==> %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 2; }

# pip as set up on some machines warns about every missing local index folder: hide that noise only.
pip_install() {
    "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

ensure_os_packages() {
    local missing=()
    command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
    command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    if [ ${#missing[@]} -eq 0 ]; then
        step "OS packages: OpenMPI, CMake and g++ present"
        return
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "OS packages: installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "missing OS packages: ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) or load your cluster's OpenMPI module, then rerun make setup"
    fi
}

find_python() {
    local v candidate
    for v in $SUPPORTED_PYTHONS; do
        for candidate in "python$v" python3; do
            if command -v "$candidate" >/dev/null 2>&1 &&
                [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$v" ]; then
                command -v "$candidate"
                return
            fi
        done
    done
    die "no supported Python found for the $ENGINE engine (need one of: $SUPPORTED_PYTHONS; for horovod: TensorFlow 2.15 has no wheels for 3.12 and Horovod 0.28.1 does not build there); set PYTHON=/path/to/python3.11"
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then
        step "virtual environment: $VENV exists ($("$VENV/bin/python" --version))"
        return
    fi
    local py="${PYTHON:-$(find_python)}"
    step "virtual environment: creating $VENV with $py"
    "$py" -m venv "$VENV"
    pip_install --upgrade pip wheel "setuptools<70"
}

ensure_python_packages() {
    local flavour=cpu
    have_gpu && flavour=gpu
    step "Python packages ($ENGINE engine): TensorFlow ($flavour build), MLflow, lenstronomy and the harness"
    # pip is quick when everything is already satisfied; its wheel cache makes reinstalls cheap.
    pip_install -e "$ROOT[$ENGINE-$flavour,dev]"
}

horovod_built_right() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import horovod.tensorflow as hvd
ok = hvd.gloo_built() and hvd.mpi_built()
raise SystemExit(0 if ok else 1)
PY
}

ensure_horovod() {
    if horovod_built_right; then
        step "Horovod: $HOROVOD_VERSION present with TensorFlow, Gloo and MPI"
        return
    fi
    local -a flags=(HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
        HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 "MAKEFLAGS=-j$(nproc)")
    if have_gpu && command -v nvcc >/dev/null 2>&1; then
        # Pascal (GTX 1080 Ti / 1050 Ti) is sm_61, Turing (RTX 2080 Ti) is sm_75.
        flags+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_BUILD_CUDA_CC_LIST=61,75)
    fi
    step "Horovod: building $HOROVOD_VERSION (${flags[*]}); about 6 minutes on 2 cores, cached by pip afterwards"
    env "${flags[@]}" "$VENV/bin/python" -m pip install -q --no-build-isolation \
        "horovod==$HOROVOD_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
}

check_horovod_build() {
    step "Horovod: horovodrun --check-build"
    local report
    report="$(TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/horovodrun" --check-build)"
    printf '%s\n' "$report"
    local part
    for part in TensorFlow Gloo MPI; do
        grep -Eq "\[X\] $part" <<<"$report" ||
            die "Horovod was built without $part; remove .venv and the cached wheel (pip cache remove horovod) and rerun make setup"
    done
}

check_tf_engine() {
    step "tf engine: TensorFlow and Keras versions"
    TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -c 'import tensorflow as tf, keras; print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}")'
}

ensure_postgres() {
    # The lab's tracking store.  Its programs live in Debian's versioned folder, off PATH.
    if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        step "PostgreSQL: present ($(ls -d /usr/lib/postgresql/*/ 2>/dev/null | head -1))"
        return
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "PostgreSQL: installing Debian's postgresql with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        # Debian starts a cluster of its own; the harness runs its own under the tracking home.
        command -v systemctl >/dev/null 2>&1 && systemctl disable --now postgresql >/dev/null 2>&1 || true
    else
        die "WITH_POSTGRES=1: PostgreSQL is not installed; sudo apt-get install postgresql (or your distribution's postgresql server package), then rerun"
    fi
}

mlflow_store_template() {
    # A new local tracking store is a copy of this instead of MLflow's schema migrations (4 s).
    step "MLflow: the empty SQLite store template, in the harness's cache folder"
    "$VENV/bin/python" -c 'from tracking.store_template import ensure_template; print("    " + str(ensure_template()))' 2> >(grep -v "INFO mlflow" >&2)
}

main() {
    if [ "$ENGINE" = tf ]; then
        ensure_venv
        ensure_python_packages
        check_tf_engine
        mlflow_store_template
    else
        ensure_os_packages
        ensure_venv
        ensure_python_packages
        ensure_horovod
        check_horovod_build
        mlflow_store_template
    fi
    if [ -n "${WITH_POSTGRES:-}" ]; then ensure_postgres; fi
    step "set-up complete ($ENGINE engine): $VENV/bin/harness"
}

main "$@"
