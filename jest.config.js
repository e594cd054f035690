'use strict';
// Tests are compiled by tsc (make build) and run from dist/, so worker threads
// load the same JavaScript the CLI runs.
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/dist'],
  testMatch: ['**/*.test.js'],
  testTimeout: 120000,
  verbose: true,
};
