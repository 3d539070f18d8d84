import { KithError } from '../errors.ts'
import type { Sublevel } from '../peer/database.ts'
import { checkRedeemProof, checkValidity } from './invite.ts'
import type { Service } from './grants.ts'

/**
 * The invites this node has issued, and what became of them. The secret is
 * kept (it is this node's own database) so the node can check redeem proofs.
 */
export interface IssuedInvite {
  id: string
  /** base64 */
  secret: string
  /** label given to the friend who redeems it */
  label: string | null
  grants: Service[]
  notBefore: number
  expires: number
  uses: number
  /** peer ids that redeemed it, in order */
  redeemedBy: string[]
  revoked: boolean
  created: number
}

export interface InviteListing {
  id: string
  label: string | null
  grants: Service[]
  expires: string
  uses: number
  used: number
  status: 'open' | 'used' | 'expired' | 'revoked'
}

export function inviteStatus (invite: IssuedInvite, now = Date.now()): InviteListing['status'] {
  if (invite.revoked) return 'revoked'
  if (invite.redeemedBy.length >= invite.uses) return 'used'
  if (now > invite.expires) return 'expired'
  return 'open'
}

export class InviteBook {
  private readonly level: Sublevel<IssuedInvite>
  /** Redemptions run one at a time so a use count can't be spent twice. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor (level: Sublevel<IssuedInvite>) {
    this.level = level
  }

  async add (invite: IssuedInvite): Promise<void> {
    await this.level.put(invite.id, invite)
  }

  async list (): Promise<InviteListing[]> {
    const out: InviteListing[] = []
    for await (const invite of this.level.values()) {
      out.push({
        id: invite.id,
        label: invite.label,
        grants: invite.grants,
        expires: new Date(invite.expires).toISOString(),
        uses: invite.uses,
        used: invite.redeemedBy.length,
        status: inviteStatus(invite)
      })
    }
    return out.sort((a, b) => a.expires.localeCompare(b.expires))
  }

  async get (id: string): Promise<IssuedInvite> {
    const invite = await this.level.get(id)
    if (invite == null) throw new KithError('INVITE_UNKNOWN', `no invite with id ${id}; see \`kith invite list\``)
    return invite
  }

  async revoke (id: string): Promise<IssuedInvite> {
    return await this.serial(async () => {
      const invite = await this.get(id)
      const revoked = { ...invite, revoked: true }
      await this.level.put(id, revoked)
      return revoked
    })
  }

  /**
   * Checks a redeem attempt and, if it holds, spends one use. The caller
   * passes `commit`, which must make the friendship durable; the use is
   * recorded only if it succeeds. A peer that already redeemed this invite
   * may redeem it again within its window without spending another use (its
   * first answer may have been lost); `commit` must then change nothing.
   */
  async redeem (id: string, issuer: string, accepter: string, proof: Uint8Array,
    commit: (invite: IssuedInvite) => Promise<void>, now = Date.now()): Promise<IssuedInvite> {
    return await this.serial(async () => {
      const invite = await this.level.get(id)
      if (invite == null || !checkRedeemProof(Buffer.from(invite.secret, 'base64'), issuer, accepter, proof)) {
        throw new KithError('INVITE_UNKNOWN', 'the issuer does not know this invite, or the proof is wrong; ask for a fresh invite')
      }
      if (invite.revoked) throw new KithError('INVITE_REVOKED', 'the issuer revoked this invite; ask for a fresh one')
      checkValidity(invite, now)
      const again = invite.redeemedBy.includes(accepter)
      if (!again && invite.redeemedBy.length >= invite.uses) {
        throw new KithError('INVITE_USED', 'this invite was already used as many times as it allows; ask for a fresh one')
      }
      await commit(invite)
      if (again) return invite
      const spent = { ...invite, redeemedBy: [...invite.redeemedBy, accepter] }
      await this.level.put(id, spent)
      return spent
    })
  }

  private async serial<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => {})
    return await run
  }
}
