#!/bin/sh
printf '\033[31mFAIL\033[0m: expected \033[1m42\033[0m, got 41\n'
exit 1
