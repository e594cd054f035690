#!/usr/bin/env node
// Thin entry point: the program lives in src/commands.
import { prestartPool } from '../src/commands/prestart';

// `convert`'s worker threads boot on the other cores while the program loads.
prestartPool(process.argv);
const { main } = require('../src/commands') as typeof import('../src/commands');
const { fail, quietOnClosedPipes } = require('../src/commands/common') as typeof import('../src/commands/common');

quietOnClosedPipes();

main(process.argv).catch((e) => fail(e));
