declare module 'ioctl' {
  /** ioctl(2): returns the call's non-negative result, throws an errno error. */
  function ioctl(fd: number, request: number, argument?: Buffer | number): number;
  export = ioctl;
}
