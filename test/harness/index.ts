/** The integration-test harness in one import: `import { makeLoopDisk, RandomWriter, ... } from '../harness'`. */
export * from './prereq';
export * from './cleanup';
export * from './loop';
export * from './direct-io';
export * from './range-set';
export * from './fault-proxy';
export * from './cluster';
export * from './netns';
export * from './netns-resource';
export * from './role-watch';
export * from './stall-disk';
export * from './failing-disk';
export * from './link-kind-proxy';
export * from './helpers';
export * from './native-source';
export * from './frame-layout';
