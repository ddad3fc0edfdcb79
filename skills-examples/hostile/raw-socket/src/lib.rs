//! Opens a TCP connection directly, to the address its input names (a JSON
//! string). `wasi:sockets` is linked with every network use turned off, so
//! the connection fails before any packet leaves; an operator may also refuse
//! the import outright (`admission.refuse_socket_imports`).

use std::io::Write;

wit_bindgen::generate!({ world: "skill", path: "../../../host-apis/wit" });

struct Socket;

impl Guest for Socket {
    fn run(input: String) -> Result<String, String> {
        let address = input.trim().trim_matches('"');
        let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        Ok("\"connected\"".into())
    }
}

export!(Socket);
