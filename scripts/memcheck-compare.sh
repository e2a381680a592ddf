#!/usr/bin/env bash
# The leak classes of Debian programs on real input, zmtrace against valgrind memcheck: the
# README's table. Each program runs once under `zmtrace run` and once under
# `valgrind --leak-check=full --trace-children=yes`; every process is matched by its executable
# and its four classes (blocks and bytes) printed side by side. zmtrace's figures are without
# its default suppressions (`--no-default-suppressions`) and, in brackets, the still reachable
# bytes the default suppressions take out.
#
# Usage: scripts/memcheck-compare.sh [ZMTRACE]    (default: target/release/zmtrace, built)
# Needs: valgrind, jq, gawk, sqlite3, python3 (Debian's), git, gcc, tar.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
zmtrace=${1:-}
if [ -z "$zmtrace" ]; then
    (cd "$root" && cargo build --release --quiet)
    zmtrace=$root/target/release/zmtrace
fi
for p in valgrind jq gawk sqlite3 /usr/bin/python3 git gcc tar; do
    command -v "$p" >/dev/null || { echo "memcheck-compare: $p is missing" >&2; exit 2; }
done
work=$(mktemp -d /tmp/zmtrace-memcheck.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Deterministic inputs.
seq 1 5000 | awk '{print ($1*7919)%10007, "w"$1%97}' > in.txt
awk 'BEGIN{printf "["; for(i=0;i<2000;i++){if(i)printf ","; printf "{\"id\":%d,\"name\":\"n%d\",\"tags\":[\"a%d\",\"b\"]}", i, i%113, i%7} print "]"}' > in.json
cat > db.sql <<'EOF'
create table t(id integer primary key, name text, v real);
with recursive c(x) as (select 1 union all select x+1 from c where x<5000) insert into t select x, 'n'||(x%97), x*1.5 from c;
create index ti on t(name);
select name, count(*), sum(v) from t group by name order by 2 desc limit 5;
EOF
cat > prog.c <<'EOF'
#include <stdio.h>
#include <stdlib.h>
struct node { int v; struct node *next; };
int main(void) {
    struct node *h = 0;
    for (int i = 0; i < 100; i++) { struct node *n = malloc(sizeof *n); n->v = i; n->next = h; h = n; }
    int s = 0;
    for (; h; h = h->next) s += h->v;
    printf("%d\n", s);
    return 0;
}
EOF
git init -q repo
for i in 1 2 3 4 5 6; do
    seq 1 $((i * 300)) > repo/f$i.txt
    GIT_AUTHOR_DATE="2024-01-0${i}T12:00:00Z" GIT_COMMITTER_DATE="2024-01-0${i}T12:00:00Z" \
        git -C repo -c user.name=z -c user.email=z@z add . >/dev/null
    GIT_AUTHOR_DATE="2024-01-0${i}T12:00:00Z" GIT_COMMITTER_DATE="2024-01-0${i}T12:00:00Z" \
        git -C repo -c user.name=z -c user.email=z@z commit -qm "change $i"
done
export PYTHONHASHSEED=0 # the same hash tables, and so the same blocks, in every run

progs=(
    "sort in.txt"
    "jq -c map(select(.id%3==0))|length in.json"
    "gawk {s+=\$1}END{print(s)} in.txt"
    "sqlite3 :memory: -init db.sql .quit"
    "git -C repo log --stat"
    "/usr/bin/python3 -c import json,re,collections,argparse,textwrap;print(json.dumps([1]))"
    "gcc -O2 -o prog prog.c"
    # libselinux, which tar links, frees in a destructor that runs after libzmtrace.so's.
    "tar cf repo.tar repo"
)

classes_zm() { # dump [flags] -> blocks and bytes of each class, then the bytes suppressed
    "$zmtrace" leaks "$1" "${@:2}" --json --top 0 | jq -r \
        '"\(.kinds.definite.blocks) \(.kinds.definite.bytes) \(.kinds.indirect.blocks) \(.kinds.indirect.bytes) \(.kinds.possible.blocks) \(.kinds.possible.bytes) \(.kinds.reachable.blocks) \(.kinds.reachable.bytes) \(.suppressed.bytes // 0)"'
}
classes_vg() { # log file -> the same eight numbers
    for k in "definitely lost" "indirectly lost" "possibly lost" "still reachable"; do
        grep -E "$k: " "$1" | sed -E 's/.*: ([0-9,]+) bytes in ([0-9,]+) blocks/\2 \1/; s/,//g'
    done | tr '\n' ' '
}
cell() { printf '%s B in %s' "$2" "$1"; }

# The same environment, in size, under both: `zmtrace run` adds LD_PRELOAD and its ZMTRACE_*
# settings (7 variables), valgrind adds LD_PRELOAD, LD_LIBRARY_PATH and GLIBC{PP,XX}_FORCE_NEW (4).
# A program that copies its environment into its heap (gawk's ENVIRON) allocates by it, and where
# its blocks fall decides what it keeps through interior pointers only (gawk: 0, 4,800 B in 1 or
# 33,648 B in 97 blocks possibly lost, under memcheck too, by the number of variables). So
# valgrind runs with as many more variables, of as many more bytes, as zmtrace's environment has.
# When valgrind's variables are the longer ones, zmtrace's output directory (ZMTRACE_OUT) is.
rm -rf zm && mkdir zm
zenv=$("$zmtrace" run -o zm -- env 2>/dev/null)
venv=$(env valgrind -q env 2>/dev/null)
rm -rf zm
more=$(($(wc -l <<<"$zenv") - $(wc -l <<<"$venv")))
bytes=$(($(wc -c <<<"$zenv") - $(wc -c <<<"$venv") - 4 * more)) # "Pk=" and the newline
zm=zm
if [ "$bytes" -lt 0 ]; then
    zm=zm$(printf '%*s' $((-bytes)) '' | tr ' ' x)
    bytes=0
fi
pad=()
for ((k = 1; k <= more; k++)); do
    len=$((bytes / more + (k <= bytes % more ? 1 : 0)))
    pad+=("P$k=$(printf '%*s' "$len" '' | tr ' ' x)")
done

echo "| program | process | | definitely lost | indirectly lost | possibly lost | still reachable |"
echo "|---|---|---|---|---|---|---|"
for p in "${progs[@]}"; do
    read -r -a argv <<<"$p"
    # `gawk {s+=$1}...`: the program text is one argument with no spaces.
    rm -rf "$zm" vg && mkdir "$zm" vg
    "$zmtrace" run -o "$zm" -- "${argv[@]}" >/dev/null 2>&1 || true
    env "${pad[@]}" valgrind --leak-check=full --trace-children=yes --log-file=vg/%p "${argv[@]}" >/dev/null 2>&1 || true
    for d in "$zm"/*.zmt; do
        exe=$("$zmtrace" dump-info "$d" | awk '/^program:/ {print $2}')
        base=$(basename "$exe")
        # gcc runs /usr/bin/as, which is x86_64-linux-gnu-as; ld is ld.bfd; gcc is gcc-12.
        name=${base#x86_64-linux-gnu-}
        name=${name%.bfd}
        name=${name%-[0-9]*}
        name=${name%%.[0-9]*}
        log=$(grep -l -E "Command: (\S*/)?(x86_64-linux-gnu-)?${name}(-[0-9]+|\.bfd)?( |$)" vg/* 2>/dev/null | head -1 || true)
        read -r -a z <<<"$(classes_zm "$d" --no-default-suppressions)"
        read -r -a zs <<<"$(classes_zm "$d")"
        if [ -n "$log" ]; then read -r -a v <<<"$(classes_vg "$log")"; else v=(- - - - - - - -); fi
        row="| \`${argv[0]##*/}\` | $base | zmtrace |"
        for i in 0 2 4; do row+=" $(cell "${z[$i]}" "${z[$((i + 1))]}") |"; done
        row+=" $(cell "${z[6]}" "${z[7]}") (${zs[8]} B of them suppressed by default) |"
        echo "$row"
        row="| | | memcheck |"
        for i in 0 2 4 6; do row+=" $(cell "${v[$i]}" "${v[$((i + 1))]}") |"; done
        echo "$row"
    done
done
