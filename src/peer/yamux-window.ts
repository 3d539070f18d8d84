import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'

/**
 * yamux window updates once half a stream's window is used, not after every
 * data frame.
 *
 * @chainsafe/libp2p-yamux 8.0.1 answers every data frame it receives with a
 * window update (`handleData` -> `sendWindowUpdate`, which returns early only
 * while none of the window is used): a 12-byte frame, a Noise message and a
 * socket write on the receiver, a read and a decryption on the sender, per
 * frame. Go's yamux (hashicorp/yamux, `sendWindowUpdate`) and rust-yamux
 * send one only once the bytes to grant reach half the window. So does this:
 * an established stream skips the update while less than half its window is
 * used. The sender still holds at least half a window, so it keeps sending,
 * and each frame it sends brings the check back. Everything else is yamux's
 * own method: updates carrying flags (SYN, ACK), a paused stream (no update,
 * the epoch restarted) and the window's growth, now judged per half window.
 *
 * test/peer/yamux-window.spec.ts counts the updates on a real connection and
 * fails if this stops applying, or if yamux starts batching them itself.
 */
const everyFrame = YamuxStream.prototype.sendWindowUpdate

/** the fields of YamuxStream (private in its types) the rule reads */
interface Window { state: StreamState, recvWindow: number, recvWindowCapacity: number }

function byHalves (this: YamuxStream): void {
  const { state, recvWindow, recvWindowCapacity } = this as unknown as Window
  if (state === StreamState.Established && recvWindow - recvWindowCapacity < recvWindow / 2) return
  everyFrame.call(this)
}

/** Installs the half-window rule on every yamux stream of this process (src/peer/node.ts does, once); `false` restores yamux's own. */
export function halfWindowUpdates (on = true): void {
  YamuxStream.prototype.sendWindowUpdate = on ? byHalves : everyFrame
}
