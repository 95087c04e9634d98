#!/bin/sh
echo "this test fails on purpose"
exit 1
