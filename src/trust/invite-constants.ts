/**
 * Invite files' version and limits (the format: invite.ts). Apart, so the CLI
 * can bound what it reads of an invite file without loading the parser and
 * its crypto.
 */
export const INVITE_VERSION = 1
/** Whole armoured text, checked before anything is parsed. */
export const MAX_INVITE_TEXT = 16 * 1024
export const MAX_INVITE_ADDRS = 16
export const MAX_ADDR_LENGTH = 256
export const MAX_NAME_LENGTH = 64
export const MAX_INVITE_USES = 1000
export const MAX_INVITE_LIFETIME_S = 365 * 24 * 3600
/** Clock skew tolerated on either side of the validity window. */
export const CLOCK_SKEW_S = 5 * 60
export const SECRET_LENGTH = 32
