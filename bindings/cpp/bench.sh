#!/usr/bin/env bash
# bench.sh: the C++ reference engine's `reason` next to the Rust engine's, per kernel class,
# measured in one run on the same machine: `cargo bench -p qnllm-engine`, then qnllm-cpp-bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="$PWD/target/cpp/release"
cmake -S bindings/cpp -B "$OUT" -DCMAKE_BUILD_TYPE=Release -DQNLLM_BUILD_TESTS=OFF >/dev/null
cmake --build "$OUT" -j2 --target qnllm-cpp-bench >/dev/null
rust=$(cargo bench -q -p qnllm-engine 2>/dev/null | grep -E '^reason, ')
cpp=$("$OUT/qnllm-cpp-bench")
echo "$rust"
echo "$cpp"
p50() { sed -E 's/.*p50 +([0-9.]+) .*/\1/'; }
ratio() { # $1 = rust kernel name, $2 = cpp kernel name
    local r c
    r=$(echo "$rust" | grep -E "reason, $1 " | p50 || true)
    c=$(echo "$cpp" | grep -E "cpp $2 " | p50 || true)
    [ -n "$r" ] && [ -n "$c" ] &&
        awk -v c="$c" -v r="$r" -v a="$2" -v b="$1" 'BEGIN { printf "cpp %s / rust %s p50: %.2f x\n", a, b, c / r }'
    return 0
}
ratio portable scalar
ratio avx2 avx2
