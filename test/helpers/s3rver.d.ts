/** The part of s3rver (which ships no types) that test/services/downloads/s3.spec.ts uses. */
declare module 's3rver' {
  export default class S3rver {
    constructor (options: { port: number, address: string, silent: boolean, directory: string, configureBuckets: Array<{ name: string, configs: unknown[] }> })
    run (): Promise<unknown>
    close (): Promise<void>
  }
}
