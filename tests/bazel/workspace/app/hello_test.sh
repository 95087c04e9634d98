#!/bin/sh
set -e
out=$(app/hello)
[ "$out" = "hello, kiln" ] || { echo "unexpected output: $out"; exit 1; }
grep -q 'hello from a genrule' app/greeting.txt
