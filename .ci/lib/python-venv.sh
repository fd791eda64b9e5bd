# Sourced by the suites that run Python (20-python, 55-teachers): makes the venv in
# target/venv-python, installs the packages named as arguments, and installs this checkout's
# bindings as a user does (`pip install ./bindings/python`, maturin as the PEP 517 backend,
# with the dev profile so the build reuses `cargo test --workspace`'s). The bindings are
# rebuilt only when the sources differ from the ones the venv's copy was built from: a second
# suite in the same `.ci/run` reuses the first one's wheel instead of rebuilding it.
# Sets PY to the venv's python.

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get install -y --no-install-recommends python3 python3-venv python3-dev >/dev/null
fi

VENV=target/venv-python
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check "$@"

# What the bindings are built from: the commit and any change to the Rust or Python sources.
bindings_source() {
    git rev-parse HEAD 2>/dev/null || return 0
    git diff HEAD -- Cargo.toml Cargo.lock crates bindings/python 2>/dev/null
    git ls-files --others --exclude-standard -- crates bindings/python 2>/dev/null | xargs -r sha256sum
}
stamp_file="$VENV/qnllm-bindings.source"
stamp=$(bindings_source | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ] || ! "$PY" -c 'import qnllm' 2>/dev/null; then
    rm -f "$stamp_file"
    MATURIN_PEP517_ARGS="--profile dev" "$PY" -m pip install -q --disable-pip-version-check \
        --force-reinstall --no-deps ./bindings/python
    echo "$stamp" >"$stamp_file"
else
    echo "the bindings in $VENV are built from these sources already"
fi
