/**
 * The part of m3u8-parser (which ships no types) that hls-playlist.ts uses:
 * feed the text, end, read `manifest` (shaped as hls-playlist.ts describes).
 */
declare module 'm3u8-parser' {
  export class Parser {
    push (chunk: string): void
    end (): void
    manifest: unknown
  }
}
