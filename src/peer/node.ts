import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, type Identify } from '@libp2p/identify'
import { ping, type Ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht'
import type { ConnectionGater, PrivateKey } from '@libp2p/interface'

/**
 * The libp2p node: TCP, Noise, yamux, identify, ping and a Kademlia DHT under
 * kith's own protocol prefix, so it only ever meets other kith nodes.
 */
export const DHT_PROTOCOL = '/kith/kad/1.0.0'
export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/0']

/** yamux's max stream window is 16 MiB; a smaller read buffer makes pause() reset the stream. */
const MAX_READ_BUFFER = 32 * 1024 * 1024

export type KithServices = {
  identify: Identify
  ping: Ping
  dht: KadDHT
}

export type KithLibp2p = Libp2p<KithServices>

export interface NodeInit {
  privateKey: PrivateKey
  listen: string[]
  gater: ConnectionGater
}

export async function createNode (init: NodeInit): Promise<KithLibp2p> {
  return await createLibp2p({
    privateKey: init.privateKey,
    addresses: { listen: init.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: { maxReadBufferLength: MAX_READ_BUFFER } })],
    connectionGater: init.gater,
    services: {
      identify: identify({ protocolPrefix: 'kith' }),
      ping: ping({ protocolPrefix: 'kith' }),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        clientMode: false,
        // friends are often on the same LAN: keep private addresses
        peerInfoMapper: passthroughMapper
      })
    }
  })
}
