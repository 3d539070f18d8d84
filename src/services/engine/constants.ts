/**
 * Named limits of the transfer engine.
 */

/** Chunk streams one connection may have open at once; each serves GETs one after another. */
export const MAX_INBOUND_CHUNK_STREAMS = 16
