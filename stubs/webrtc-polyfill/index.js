// d4fs: WebRTC is deliberately absent (TCP peers only); see package.json.
class Unavailable {
  constructor () {
    throw new Error('WebRTC is not available in d4fs: peers connect over TCP only')
  }
}
export const RTCPeerConnection = Unavailable
export const RTCSessionDescription = Unavailable
export const RTCIceCandidate = Unavailable
export const RTCIceTransport = Unavailable
export const RTCDataChannel = Unavailable
export const RTCSctpTransport = Unavailable
export const RTCDtlsTransport = Unavailable
export const RTCCertificate = Unavailable
export default { RTCPeerConnection, RTCSessionDescription, RTCIceCandidate }
