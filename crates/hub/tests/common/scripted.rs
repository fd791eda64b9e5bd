//! A hub played by a test: it accepts one real worker on 127.0.0.1:0, walks it through the
//! handshake, then reads and writes frames on its connection.

use bytes::BytesMut;
use qnllm_protocol::{encode_frame, Deadline, Frame, FrameDecoder, Message, Registered, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::WAIT;

pub(crate) struct ScriptedHub {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl ScriptedHub {
    /// Accepts the worker's connection and answers its hello and register.
    pub(crate) async fn accept(listener: &tokio::net::TcpListener) -> ScriptedHub {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut hub = ScriptedHub {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
        };
        assert!(matches!(
            hub.recv().await.message().unwrap(),
            Message::Hello(_)
        ));
        hub.send(&Message::Welcome(Welcome {
            session: 1,
            server: "scripted".into(),
            max_frame_bytes: 1 << 24,
            heartbeat_interval_ms: 60_000,
        }))
        .await;
        assert!(matches!(
            hub.recv().await.message().unwrap(),
            Message::Register(_)
        ));
        hub.send(&Message::Registered(Registered {
            engine_id: 1,
            heartbeat_interval_ms: 60_000,
        }))
        .await;
        hub
    }

    pub(crate) async fn recv(&mut self) -> Frame {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return frame;
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the worker closed the connection");
        }
    }

    pub(crate) async fn send(&mut self, message: &Message) {
        let mut out = BytesMut::new();
        encode_frame(message, 0, Deadline::NONE, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// Raw bytes, as they are: several frames in one write, or a torn one.
    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next reply that is not a heartbeat: its request id and message.
    pub(crate) async fn reply(&mut self) -> (u64, Message) {
        loop {
            let frame = self.recv().await;
            let message = frame.message().unwrap();
            if !matches!(message, Message::Heartbeat(_)) {
                return (frame.header.request_id, message);
            }
        }
    }
}
