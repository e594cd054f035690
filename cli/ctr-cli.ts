#!/usr/bin/env node
// Thin entry point: the program lives in src/commands.
import { main } from '../src/commands';
import { fail } from '../src/commands/common';

main(process.argv).catch((e) => fail(e));
