//! Opens a TCP connection directly. The import of `wasi:sockets` alone gets the
//! component rejected before it is compiled.

use std::io::Write;

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

struct Socket;

impl Guest for Socket {
    fn run(input: String) -> Result<String, String> {
        let mut stream = std::net::TcpStream::connect(input.trim()).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        Ok("\"connected\"".into())
    }
}

export!(Socket);
